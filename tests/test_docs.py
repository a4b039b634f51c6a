"""README.md and docs/*.md stay true to the code: every relative link and anchor resolves,
and every command in their shell blocks names a module, script, config, config field,
subcommand and flag that exist. CI runs the README's one-line test command verbatim."""

import argparse
import glob
import importlib
import os
import re
import shlex

import pytest

from conftest import REPO

DOCS = [os.path.join(REPO, 'README.md')] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)
ABSL_FLAG = re.compile(r"DEFINE_\w+\(\s*'([\w-]+)'")
ARGPARSE_FLAG = re.compile(r"add_argument\(\s*'(--[\w-]+)'")
ABSL_BUILTIN = {'help', 'helpfull', 'helpshort', 'flagfile', 'logtostderr', 'alsologtostderr',
                'verbosity', 'v'}


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _rel(path):
  return os.path.relpath(path, REPO)


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r'[`*_]|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def _anchors(path):
  text = FENCE.sub('', _read(path))
  return {_slug(m.group(1)) for m in re.finditer(r'^#+ (.+)$', text, re.M)}


def _shell_commands(path):
  """(command words) for every command of the file's shell blocks (no language, sh, bash,
  shell), with continuations joined, comments dropped and `&&` chains split."""
  for language, body in FENCE.findall(_read(path)):
    if language not in ('', 'sh', 'bash', 'shell'):
      continue
    for line in body.replace('\\\n', ' ').splitlines():
      line = line.split(' # ')[0].strip()
      if not line or line.startswith('#') or line.startswith('...'):
        continue
      for part in line.split('&&'):
        words = shlex.split(part, comments=True)
        while words and re.match(r'^[A-Z_]+=', words[0]):   # VAR=value prefixes
          words = words[1:]
        if words:
          yield words


def test_relative_links_and_anchors_resolve():
  broken = []
  for doc in DOCS:
    for target in LINK.findall(_read(doc)):
      if re.match(r'^[a-z]+://', target) or target.startswith('mailto:'):
        continue
      path, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
      if not os.path.exists(resolved):
        broken.append(f'{_rel(doc)}: {target} (no file {_rel(resolved)})')
      elif anchor and resolved.endswith('.md') and anchor not in _anchors(resolved):
        broken.append(f'{_rel(doc)}: {target} (no heading #{anchor})')
  assert not broken, '\n'.join(broken)


def _module_file(module: str) -> str | None:
  base = os.path.join(REPO, *module.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__main__.py')):
    if os.path.isfile(candidate):
      return candidate
  return None


def _flag_names(words):
  for word in words:
    if word.startswith('--'):
      yield word[2:].split('=', 1)[0]


def _check_config_fields(words, config_arg, problems, where):
  """--config.a.b=... fields exist in the config the command names (or the default)."""
  fields = [name[len('config.'):] for name in _flag_names(words) if name.startswith('config.')]
  if not fields or '<' in config_arg:
    return
  path, _, arg = config_arg.partition(':')
  module = importlib.import_module(_rel(os.path.join(REPO, path))[:-3].replace(os.sep, '.'))
  config = module.get_config(arg) if arg else module.get_config()
  for field in fields:
    node = config
    for key in field.split('.'):
      if key not in node:
        problems.append(f'{where}: --config.{field}: no such config field')
        break
      node = node[key]


def _absl_flags(module_file, seen=None) -> set[str]:
  """The absl flags a module defines and those of the project modules it imports."""
  seen = set() if seen is None else seen
  if module_file in seen:
    return set()
  seen.add(module_file)
  source = _read(module_file)
  names = set(ABSL_FLAG.findall(source))
  for package, imported in re.findall(r'^from ((?:dgan_jax|convert_weights)[\w.]*) import ([\w, ]+)',
                                      source, re.M):
    for name in imported.split(','):
      name = name.split(' as ')[0].strip()
      found = _module_file(f'{package}.{name}') or _module_file(package)
      if found:
        names |= _absl_flags(found, seen)
  return names


def _check_absl(module_file, words, problems, where):
  defined = _absl_flags(module_file)
  if 'config' in defined:
    config_arg = next((w.split('=', 1)[1] for w in words if w.startswith('--config=')),
                      'configs/toy.py')
    if '<' not in config_arg and not os.path.isfile(
        os.path.join(REPO, config_arg.partition(':')[0])):
      problems.append(f'{where}: no config {config_arg}')
      return
    _check_config_fields(words, config_arg, problems, where)
  for name in _flag_names(words):
    if name.startswith('config.') or name in ABSL_BUILTIN:
      continue
    if name not in defined and not (name.startswith('no') and name[2:] in defined):
      problems.append(f'{where}: --{name} is not a flag of {_rel(module_file)}')


def _check_convert_weights(words, problems, where):
  from convert_weights import __main__ as cli  # pylint: disable=import-outside-toplevel
  converters = cli.converters()
  if len(words) < 1 or words[0] not in converters:
    problems.append(f'{where}: convert_weights has no subcommand {words[:1]}')
    return
  parser = argparse.ArgumentParser()
  converters[words[0]].add_arguments(parser)
  known = {s for action in parser._actions for s in action.option_strings}  # pylint: disable=protected-access
  known |= {'--overwrite'}
  for name in _flag_names(words[1:]):
    if f'--{name}' not in known:
      problems.append(f'{where}: --{name} is not an option of convert_weights {words[0]}')


def test_every_command_names_what_exists():
  problems, checked = [], 0
  for doc in DOCS:
    for words in _shell_commands(doc):
      where = f'{_rel(doc)}: {" ".join(words)[:90]}'
      if words[0] in ('pip', 'pip3') and '-r' in words:
        requirements = words[words.index('-r') + 1]
        if not os.path.isfile(os.path.join(REPO, requirements)):
          problems.append(f'{where}: no file {requirements}')
      if words[0] not in ('python', 'python3'):
        continue
      checked += 1
      if words[1] == '-m':
        module, rest = words[2], words[3:]
        if module in ('venv', 'pytest', 'pip'):
          continue
        if module == 'convert_weights':
          _check_convert_weights(rest, problems, where)
          continue
        module_file = _module_file(module)
        if module_file is None:
          problems.append(f'{where}: no module {module}')
        else:
          _check_absl(module_file, rest, problems, where)
      else:
        script = os.path.join(REPO, words[1])
        if not os.path.isfile(script):
          problems.append(f'{where}: no script {words[1]}')
          continue
        source = _read(script)
        defined = {f'--{n}' for n in ABSL_FLAG.findall(source)} | set(
            ARGPARSE_FLAG.findall(source))
        for name in _flag_names(words[2:]):
          if f'--{name}' not in defined:
            problems.append(f'{where}: --{name} is not an option of {words[1]}')
  assert checked > 20, checked   # the walk-through, converters and benchmarks are found
  assert not problems, '\n'.join(problems)


def test_ci_runs_the_readme_test_command_verbatim():
  """.ci/run's command is a line of the README's Quick start, character for character."""
  ci = [line for line in _read(os.path.join(REPO, '.ci', 'run')).splitlines()
        if 'python -m pytest' in line]
  assert len(ci) == 1
  assert ci[0] in _read(os.path.join(REPO, 'README.md')).splitlines()
  assert ci[0].startswith('python3 -m venv .venv && ')


@pytest.mark.parametrize('doc', [_rel(d) for d in DOCS])
def test_shell_blocks_are_found(doc):
  """The parser above sees every shell block (a block it skipped would go unchecked)."""
  text = _read(os.path.join(REPO, doc))
  blocks = [lang for lang, _ in FENCE.findall(text)]
  assert text.count('```') == 2 * len(blocks), f'{doc}: unbalanced code fences'

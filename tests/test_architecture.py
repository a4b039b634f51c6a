"""The shape of the code: no import cycle inside dgan_jax/ (imports inside functions
included), nothing but main.py imports the stages, and the stages name no generator
family, labeler or domain."""

import ast
import os
import re

from conftest import REPO

PACKAGE = os.path.join(REPO, 'dgan_jax')


def _modules() -> dict[str, str]:
  modules = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(dirpath, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        modules[module.removesuffix('.__init__')] = path
  return modules


def _import_graph() -> dict[str, set[str]]:
  """Module -> the dgan_jax modules it imports (`from pkg import mod` depends on pkg.mod)."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        targets = [f'{node.module}.{a.name}' for a in node.names
                   if f'{node.module}.{a.name}' in modules] or [node.module]
      else:
        continue
      graph[module] |= {t for t in targets if t in modules and t != module}
  return graph


def _cycle(graph) -> list[str] | None:
  """A cycle of the graph (depth-first search), or None."""
  state, path = {}, []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycle_and_only_main_imports_the_stages():
  graph = _import_graph()
  assert {'dgan_jax.stages', 'dgan_jax.generators.base', 'dgan_jax.labelers'} <= set(graph)
  assert _cycle(graph) is None, _cycle(graph)
  assert sorted(m for m, targets in graph.items() if 'dgan_jax.stages' in targets) == [
      'dgan_jax.main']
  # The checker finds a cycle when there is one.
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_stages_name_no_generator_labeler_or_domain():
  with open(os.path.join(PACKAGE, 'stages.py')) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):   # the code without its docstrings (comments are not kept)
    body = getattr(node, 'body', None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  code = ast.unparse(tree)
  assert 'def train_interpreter' in code and 'labelers.from_config' in code
  names = re.compile(r'biggan|stylegan|vqgan|interpreter\.|head_lib|bigdatasetgan|toy|mlp|'
                     r'conv_head', re.I)
  assert names.findall(code) == []

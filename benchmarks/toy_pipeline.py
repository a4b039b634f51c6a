"""The toy domain's whole run, stage by stage: wall time, peak memory, and the results.

  python benchmarks/toy_pipeline.py                 # configs/toy.py (budget: 30 min)
  python benchmarks/toy_pipeline.py --variant=quick # configs/toy.py:quick (budget: 5 min)
  python benchmarks/toy_pipeline.py --shared-pixels # interpreter.shared_pixels=True

Runs every stage in one process on a fresh temporary workdir (or --workdir, whose
finished stages are then skipped and timed as such), then prints per-stage seconds, the
process's peak RSS, the total against the budget, the machine's matmul rate (for
comparing machines) and the mIoU table of eval.json.
"""

import argparse
import importlib
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import machine  # pylint: disable=wrong-import-position

BUDGET_MINUTES = {'': 30, 'quick': 5}


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--variant', default='', choices=sorted(BUDGET_MINUTES))
  parser.add_argument('--workdir', default='')
  parser.add_argument('--shared-pixels', action='store_true',
                      help='config.interpreter.shared_pixels=True (its mIoU against the default)')
  args = parser.parse_args()
  from dgan_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax import stages  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.toy').get_config(args.variant or None)
  config.interpreter.shared_pixels = args.shared_pixels
  workdir = args.workdir or tempfile.mkdtemp(prefix='toy_pipeline_')
  rows = []
  total_start = time.perf_counter()
  for name in config_lib.selected_stages(config):
    start = time.perf_counter()
    stages.STAGE_FUNCTIONS[name](config, workdir)
    rows.append((name, time.perf_counter() - start, _peak_rss_gb()))
  total = time.perf_counter() - total_start
  budget = 60 * BUDGET_MINUTES[args.variant]

  print(f'\nconfigs/toy.py{":" + args.variant if args.variant else ""}, workdir {workdir}')
  print(f'{"stage":<18}{"seconds":>10}{"peak RSS GB":>14}')
  for name, seconds, rss in rows:
    print(f'{name:<18}{seconds:>10.1f}{rss:>14.2f}')
  print(f'{"total":<18}{total:>10.1f}   = {total / 60:.1f} min, {total / budget:.2f}x the '
        f'{budget // 60} min budget')
  print(f'matmul rate of this machine: {machine.matmul_gflops():.0f} GFLOP/s')
  with open(os.path.join(workdir, 'eval.json')) as f:
    runs = json.load(f)['runs']
  print(f'\n{"run":<22}{"images":>8}{"mIoU %":>14}')
  for name, run in runs.items():
    print(f'{name:<22}{run["num_train_images"]:>8}'
          f'{100 * run["miou_mean"]:>8.1f} ± {100 * run["miou_std"]:.1f}')
  print(f'report: {os.path.join(workdir, "report.md")}')


if __name__ == '__main__':
  main()

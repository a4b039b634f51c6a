"""docs/reliability.md, Determinism: sample i's z and noise are bitwise the same whatever the
batch size or device count. The noise is the arrays the generate step's synthesis
consumes ('per_sample' noise on configs/test.py's tiny StyleGAN), caught where the
generator draws them; four CPU devices in a subprocess (XLA_FLAGS), as test_factory's
device test."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO
from dgan_jax import latents

RUNS = ((1, 3), (4, 8))   # (devices, batch size) over samples 0..7: calls of 3, 3 and 2 (padded)

_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import numpy as np, jax, jax.numpy as jnp
    import test_factory as t
    from dgan_jax import factory as factory_lib, features, generators
    from dgan_jax.generators import style

    drawn = []   # the noise lists the synthesis is given, as traced in the step
    draw = style.noise_from_keys
    def spy(arch, keys, dtype=jnp.float32):
      noise = draw(arch, keys, dtype)
      drawn.append(noise)
      return noise
    style.noise_from_keys = spy

    class NoiseFactory(factory_lib.Factory):
      def _outputs(self, generator_variables, labeler_variables, inputs, what):
        drawn.clear()
        out = super()._outputs(generator_variables, labeler_variables, inputs, what)
        (noise,) = drawn
        out.update({{f'noise{{j}}': n for j, n in enumerate(noise)}})
        return out

    config = t._config(**{{'generator.noise': 'per_sample'}})
    g = generators.from_config(config.generator, config.seed)
    layout = features.layout_for(g, config.data)
    arch, params, stats = t._ensemble(layout)
    for devices, batch in {runs!r}:
      factory = NoiseFactory(g, g.sampling(config), t._labeler(arch, params, stats), layout,
                             chunk_rows=8, devices=jax.local_devices()[:devices],
                             batch_size=batch)
      out = factory(np.arange(8))
      np.savez(f'{{sys.argv[1]}}/out_{{devices}}_{{batch}}.npz',
               **{{k: v for k, v in out.items() if k == 'z' or k.startswith('noise')}})
''')


@pytest.mark.slow
def test_z_and_noise_are_bitwise_the_same_whatever_batch_and_device_count(tmp_path):
  script = _SCRIPT.format(repo=REPO, tests=os.path.join(REPO, 'tests'), runs=RUNS)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  outs = {run: dict(np.load(tmp_path / f'out_{run[0]}_{run[1]}.npz')) for run in RUNS}
  reference = outs[RUNS[-1]]
  noise_names = sorted((k for k in reference if k.startswith('noise')), key=lambda k: int(k[5:]))
  assert len(noise_names) == 8   # 32 px StyleGAN (v1): two noise inputs per block, 4 to 32 px
  for run, out in outs.items():
    assert sorted(out) == sorted(reference), run
    for name, value in out.items():
      np.testing.assert_array_equal(value, reference[name], err_msg=f'{run} {name}')
  # What they are: z from (seed, 0, i); layer j's noise N(0, 1) from fold_in of the key
  # (seed, 1, i), each sample drawn alone here (another program: within float rounding).
  np.testing.assert_allclose(reference['z'], latents.sample_z(0, np.arange(8), 512), atol=1e-6)
  for i in (0, 5):
    key = latents.sample_key(0, latents.NOISE_STREAM, i)
    for j, name in enumerate(noise_names):
      shape = reference[name].shape[1:]
      np.testing.assert_allclose(reference[name][i],
                                 jax.random.normal(jax.random.fold_in(key, j), shape),
                                 atol=1e-6, err_msg=name)
  assert np.std(reference['noise7'][0]) > 0.5 and not np.array_equal(
      reference['noise7'][0], reference['noise7'][1])

"""What the style-based converters (stylegan1, stylegan2) share: their options and the
converted directory they write (constant noise, average W)."""

import convert_weights
from dgan_jax.generators import checkpoint
from dgan_jax.generators import style


def add_arguments(parser, avg_latent_help: str) -> None:
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--avg-latent', help=avg_latent_help)
  parser.add_argument('--noise-seed', type=convert_weights.non_negative_int, default=0,
                      help='seed of the constant noise stored when SRC has none (default 0)')


def save(dst: str, arch, flat: dict, avg, noise, info: dict, avg_latent_path: str | None,
         noise_seed: int) -> dict:
  """Writes the generator directory DST: the params, the constant noise (SRC's, or drawn
  from RandomState(noise_seed) when it has none) and the average W (the file
  avg_latent_path when given, else SRC's, if any). Returns the info record written."""
  if noise is None:
    noise = style.draw_const_noise(arch, noise_seed)
    info['const_noise'] = f'drawn at conversion: numpy RandomState({noise_seed}) N(0, 1)'
  else:
    info['const_noise'] = 'from the checkpoint'
  if avg_latent_path:
    avg = style.read_avg_latent(avg_latent_path, arch)
  extras = {f'noise/{j}': n for j, n in enumerate(noise)}
  if avg is not None:
    extras['avg_latent'] = avg
  info['avg_latent'] = 'none' if avg is None else str(tuple(avg.shape))
  checkpoint.save(dst, arch.to_json(), checkpoint.unflatten(flat), extras, info)
  return info

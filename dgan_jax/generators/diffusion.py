"""The Gaussian diffusion of openai guided-diffusion, for sampling and for features.

Schedules (`betas`: 'linear', 'cosine'), respacing (`space_timesteps`, guided-diffusion's
'100', '10,20,30' or 'ddim50' strings), q(x_t | x_0) (`Diffusion.q_sample`), the model's
mean and variance (`p_mean_variance`: eps or x_0 prediction; learned-range, fixed-large
or fixed-small variance; `clip_denoised`), and the two samplers, ancestral DDPM
(`p_sample` step) and DDIM with eta (`ddim_sample` step), each a `lax.scan` over the
respaced steps (`sample`).

Every coefficient is computed in float64 with numpy and used as float32, as
guided-diffusion's `_extract_into_tensor` does; images are NHWC.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ('linear', 'cosine')
SAMPLERS = ('ddpm', 'ddim')


def betas(schedule: str, num_steps: int) -> np.ndarray:
  """float64 [num_steps]: 'linear' from 1e-4 to 2e-2 (scaled by 1000 / num_steps, Ho et
  al.'s), or 'cosine' (Nichol and Dhariwal's alpha-bar, each beta capped at 0.999)."""
  if schedule == 'linear':
    scale = 1000 / num_steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
  if schedule == 'cosine':
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                     for i in range(num_steps)], np.float64)
  raise ValueError(f'unknown noise schedule {schedule!r} (known: {list(SCHEDULES)})')


def space_timesteps(num_steps: int, respacing: str) -> list[int]:
  """The original steps a respaced process keeps, ascending. respacing: '' (every
  step); 'N' or 'N1,N2,...' (the steps cut into that many equal sections, each strided
  evenly to N_k steps, both ends included); 'ddimN' (the stride that gives exactly N
  steps from 0)."""
  if not respacing:
    return list(range(num_steps))
  if respacing.startswith('ddim'):
    count = int(respacing[len('ddim'):])
    for stride in range(1, num_steps):
      if len(range(0, num_steps, stride)) == count:
        return list(range(0, num_steps, stride))
    raise ValueError(f'cannot take exactly {count} of {num_steps} steps with one stride')
  counts = [int(c) for c in respacing.split(',')]
  size, extra = divmod(num_steps, len(counts))
  start, kept = 0, []
  for i, count in enumerate(counts):
    section = size + (1 if i < extra else 0)
    if not 1 <= count <= section:
      raise ValueError(f'cannot take {count} steps from a section of {section}')
    stride = 1 if count <= 1 else (section - 1) / (count - 1)
    kept += [start + round(stride * k) for k in range(count)]
    start += section
  return sorted(set(kept))


@dataclasses.dataclass(frozen=True)
class DiffusionArch:
  """guided-diffusion's diffusion flags (MODEL_FLAGS / create_gaussian_diffusion);
  learn_sigma is the UNet's."""
  diffusion_steps: int = 1000
  noise_schedule: str = 'linear'
  predict_xstart: bool = False
  rescale_timesteps: bool = False
  sigma_small: bool = False       # fixed variance without learn_sigma: posterior, not beta

  def __post_init__(self):
    if self.noise_schedule not in SCHEDULES:
      raise ValueError(f'noise_schedule must be one of {list(SCHEDULES)}, got '
                       f'{self.noise_schedule!r}')
    if self.diffusion_steps < 1:
      raise ValueError(f'diffusion_steps must be at least 1, got {self.diffusion_steps}')


def _f32(a) -> jax.Array:
  return jnp.asarray(np.asarray(a, np.float64).astype(np.float32))


class Diffusion:
  """One (possibly respaced) diffusion process: timestep t counts its own steps
  0..num_steps-1; `model_timesteps(t)` is what the model is given (the original step,
  times 1000 / diffusion_steps with rescale_timesteps)."""

  def __init__(self, arch: DiffusionArch, learn_sigma: bool, respacing: str = ''):
    self.arch = arch
    self.learn_sigma = learn_sigma
    base = betas(arch.noise_schedule, arch.diffusion_steps)
    self.timestep_map = space_timesteps(arch.diffusion_steps, respacing)
    cumprod, last, b = np.cumprod(1.0 - base), 1.0, []
    for step in self.timestep_map:
      b.append(1 - cumprod[step] / last)
      last = cumprod[step]
    b = np.asarray(b, np.float64)
    self.num_steps = len(b)
    if self.num_steps < 2:
      raise ValueError(f'timestep respacing {respacing!r} keeps {self.num_steps} step; the '
                       'clipped posterior variance needs at least 2')
    alphas_cumprod = np.cumprod(1.0 - b)
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = b * (1.0 - prev) / (1.0 - alphas_cumprod)
    posterior_log_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    self._np = {
        'betas': b, 'alphas_cumprod': alphas_cumprod, 'alphas_cumprod_prev': prev,
        'sqrt_alphas_cumprod': np.sqrt(alphas_cumprod),
        'sqrt_one_minus_alphas_cumprod': np.sqrt(1.0 - alphas_cumprod),
        'sqrt_recip_alphas_cumprod': np.sqrt(1.0 / alphas_cumprod),
        'sqrt_recipm1_alphas_cumprod': np.sqrt(1.0 / alphas_cumprod - 1),
        'posterior_log_variance_clipped': posterior_log_clipped,
        'posterior_mean_coef1': b * np.sqrt(prev) / (1.0 - alphas_cumprod),
        'posterior_mean_coef2': (1.0 - prev) * np.sqrt(1.0 - b) / (1.0 - alphas_cumprod),
        'log_betas': np.log(b),
        'fixed_large_log_variance': np.log(np.append(posterior_variance[1], b[1:])),
    }

  def coefficient(self, name: str, t: jax.Array) -> jax.Array:
    """float32 coefficient `name` at timesteps t [B] -> [B, 1, 1, 1]."""
    return _f32(self._np[name])[jnp.asarray(t, jnp.int32)][:, None, None, None]

  def model_timesteps(self, t: jax.Array) -> jax.Array:
    """Respaced timesteps t [B] -> the model's timestep input [B] float32."""
    original = jnp.asarray(np.asarray(self.timestep_map, np.float32))[jnp.asarray(t, jnp.int32)]
    if self.arch.rescale_timesteps:
      original = original * np.float32(1000.0 / self.arch.diffusion_steps)
    return original

  def q_sample(self, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise; t [B]."""
    return (self.coefficient('sqrt_alphas_cumprod', t) * x_start
            + self.coefficient('sqrt_one_minus_alphas_cumprod', t) * noise)

  def p_mean_variance(self, model_output: jax.Array, x: jax.Array, t: jax.Array,
                      clip_denoised: bool = True) -> dict[str, jax.Array]:
    """The model's output at x [B, R, R, C], t [B] -> {'mean', 'log_variance',
    'pred_xstart'} of p(x_{t-1} | x_t). With learn_sigma the output's last C channels
    v in [-1, 1] interpolate the log variance from the clipped posterior's (v = -1)
    to beta_t's (v = 1)."""
    c = x.shape[-1]
    model_output = model_output.astype(jnp.float32)
    if self.learn_sigma:
      model_output, values = model_output[..., :c], model_output[..., c:]
      frac = (values + 1) / 2
      log_variance = (frac * self.coefficient('log_betas', t)
                      + (1 - frac) * self.coefficient('posterior_log_variance_clipped', t))
    else:
      name = ('posterior_log_variance_clipped' if self.arch.sigma_small
              else 'fixed_large_log_variance')
      log_variance = jnp.broadcast_to(self.coefficient(name, t), x.shape)
    if self.arch.predict_xstart:
      pred_xstart = model_output
    else:
      pred_xstart = (self.coefficient('sqrt_recip_alphas_cumprod', t) * x
                     - self.coefficient('sqrt_recipm1_alphas_cumprod', t) * model_output)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1, 1)
    mean = (self.coefficient('posterior_mean_coef1', t) * pred_xstart
            + self.coefficient('posterior_mean_coef2', t) * x)
    return {'mean': mean, 'log_variance': log_variance, 'pred_xstart': pred_xstart}

  def p_sample(self, model_output, x, t, noise, clip_denoised: bool = True) -> jax.Array:
    """One ancestral step: x_t -> x_{t-1} = mean + exp(log_variance / 2) noise (no noise
    at t = 0)."""
    out = self.p_mean_variance(model_output, x, t, clip_denoised)
    nonzero = (jnp.asarray(t) != 0).astype(jnp.float32)[:, None, None, None]
    return out['mean'] + nonzero * jnp.exp(0.5 * out['log_variance']) * noise

  def ddim_sample(self, model_output, x, t, noise, clip_denoised: bool = True,
                  eta: float = 0.0) -> jax.Array:
    """One DDIM step (Song et al.'s eq. 12): x_0 and eps from the model, sigma =
    eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)."""
    pred_xstart = self.p_mean_variance(model_output, x, t, clip_denoised)['pred_xstart']
    eps = ((self.coefficient('sqrt_recip_alphas_cumprod', t) * x - pred_xstart)
           / self.coefficient('sqrt_recipm1_alphas_cumprod', t))
    alpha_bar = self.coefficient('alphas_cumprod', t)
    alpha_bar_prev = self.coefficient('alphas_cumprod_prev', t)
    sigma = (eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
             * jnp.sqrt(1 - alpha_bar / alpha_bar_prev))
    mean = pred_xstart * jnp.sqrt(alpha_bar_prev) + jnp.sqrt(
        1 - alpha_bar_prev - sigma ** 2) * eps
    nonzero = (jnp.asarray(t) != 0).astype(jnp.float32)[:, None, None, None]
    return mean + nonzero * sigma * noise

  def sample(self, model: Callable[[jax.Array, jax.Array], jax.Array], x_t: jax.Array,
             step_noise: Callable[[jax.Array], jax.Array], sampler: str = 'ddpm',
             clip_denoised: bool = True, eta: float = 0.0) -> jax.Array:
    """The reverse process from x_T [B, R, R, C] over every (respaced) step, as one
    lax.scan. model(x, model timesteps [B]) -> output; step_noise(k) -> the noise
    [B, R, R, C] of the k-th step taken (k = 0 at t = T - 1). -> x_0 [B, R, R, C]
    float32 (not clipped)."""
    if sampler not in SAMPLERS:
      raise ValueError(f'unknown sampler {sampler!r} (known: {list(SAMPLERS)})')
    batch = x_t.shape[0]

    def step(x, k):
      t = jnp.full((batch,), self.num_steps - 1 - k, jnp.int32)
      output = model(x, self.model_timesteps(t))
      if sampler == 'ddpm':
        x = self.p_sample(output, x, t, step_noise(k), clip_denoised)
      else:
        x = self.ddim_sample(output, x, t, step_noise(k), clip_denoised, eta)
      return x, None

    x, _ = jax.lax.scan(step, x_t.astype(jnp.float32), jnp.arange(self.num_steps))
    return x

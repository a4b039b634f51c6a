"""The minGPT transformer of taming-transformers (the prior of VQGAN's class-conditional
`cin_transformer`), as pure functions over a parameter pytree named like its state dict
(`blocks/0/attn/key/weight` for `blocks.0.attn.key.weight`; linear weights [in, out],
taming's are [out, in]), with a KV cache and a compiled sampling loop.

Sampling follows taming's `mingpt.sample`: logits of the last position / temperature,
optionally all but the top k set to -inf (`top_k_logits`: values below the k-th largest),
then the most likely token (greedy) or a draw from the softmax. A draw inverts the
softmax's cumulative distribution at one uniform number per sample and step
(`categorical_by_inversion`), so a sample's tokens are a function of its own numbers,
whatever its batch.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GPTArch:
  vocab_size: int
  block_size: int
  n_layer: int = 12
  n_head: int = 8
  n_embd: int = 256

  @property
  def head_size(self) -> int:
    return self.n_embd // self.n_head


def param_shapes(arch: GPTArch) -> dict[str, tuple[int, ...]]:
  """Flat name -> shape, taming's GPT state-dict names with '/'."""
  e = arch.n_embd
  shapes = {'tok_emb/weight': (arch.vocab_size, e), 'pos_emb': (1, arch.block_size, e)}
  for i in range(arch.n_layer):
    block = f'blocks/{i}'
    for norm in ('ln1', 'ln2'):
      shapes.update({f'{block}/{norm}/weight': (e,), f'{block}/{norm}/bias': (e,)})
    for part in ('key', 'query', 'value', 'proj'):
      shapes.update({f'{block}/attn/{part}/weight': (e, e), f'{block}/attn/{part}/bias': (e,)})
    shapes.update({f'{block}/mlp/0/weight': (e, 4 * e), f'{block}/mlp/0/bias': (4 * e,),
                   f'{block}/mlp/2/weight': (4 * e, e), f'{block}/mlp/2/bias': (e,)})
  shapes.update({'ln_f/weight': (e,), 'ln_f/bias': (e,), 'head/weight': (e, arch.vocab_size)})
  return shapes


def _layer_norm(p, x, eps: float = 1e-5):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p['weight'] + p['bias']


def _linear(p, x):
  return x @ p['weight'] + p['bias']


def _heads(arch: GPTArch, x):
  """[B, T, E] -> [B, n_head, T, head_size]."""
  b, t, _ = x.shape
  return x.reshape(b, t, arch.n_head, arch.head_size).transpose(0, 2, 1, 3)


def _attend(p, arch: GPTArch, q, k, v, visible):
  """q [B, h, T, s], k and v [B, h, S, s], visible [T, S] bool -> [B, T, E] projected."""
  scores = jnp.einsum('bhts,bhus->bhtu', q, k) / math.sqrt(arch.head_size)
  weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
  y = jnp.einsum('bhtu,bhus->bhts', weights, v)
  b, _, t, _ = y.shape
  return _linear(p['proj'], y.transpose(0, 2, 1, 3).reshape(b, t, arch.n_embd))


def _mlp(p, x):
  return _linear(p['2'], jax.nn.gelu(_linear(p['0'], x), approximate=False))


def _embed(params, tokens, positions):
  """tokens [B, T], positions [T] -> token + position embeddings [B, T, E]."""
  return (jnp.take(params['tok_emb']['weight'], tokens, axis=0)
          + jnp.take(params['pos_emb'][0], positions, axis=0))


def _query_key_value(p, arch: GPTArch, x):
  """A block's attention inputs from x [B, T, E]: q, k, v [B, n_head, T, head_size]."""
  h = _layer_norm(p['ln1'], x)
  return tuple(_heads(arch, _linear(p['attn'][n], h)) for n in ('query', 'key', 'value'))


def _block_output(p, arch: GPTArch, x, q, k, v, visible):
  """The rest of a block: x + attention(q, k, v), then x + MLP."""
  x = x + _attend(p['attn'], arch, q, k, v, visible)
  return x + _mlp(p['mlp'], _layer_norm(p['ln2'], x))


def _logits(params, x):
  return _layer_norm(params['ln_f'], x) @ params['head']['weight']


def forward(params: Params, arch: GPTArch, tokens: jax.Array) -> jax.Array:
  """tokens [B, T] int (T <= block_size) -> logits [B, T, vocab_size], causal."""
  t = tokens.shape[1]
  x = _embed(params, tokens, jnp.arange(t))
  causal = jnp.tril(jnp.ones((t, t), bool))
  for i in range(arch.n_layer):
    p = params['blocks'][str(i)]
    x = _block_output(p, arch, x, *_query_key_value(p, arch, x), causal)
  return _logits(params, x)


def empty_cache(arch: GPTArch, batch: int, dtype=jnp.float32) -> dict[str, jax.Array]:
  """Keys and values of every layer: 'k', 'v' [n_layer, B, n_head, block_size, head_size]."""
  shape = (arch.n_layer, batch, arch.n_head, arch.block_size, arch.head_size)
  return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}


def decode_step(params: Params, arch: GPTArch, cache: dict, tokens: jax.Array,
                position) -> tuple[jax.Array, dict]:
  """One position with the KV cache: tokens [B] at `position` (traced int) -> (logits
  [B, vocab_size] for the next position, the cache with this position's keys/values)."""
  x = _embed(params, tokens[:, None], jnp.asarray(position)[None])    # [B, 1, E]
  visible = (jnp.arange(arch.block_size) <= position)[None]           # [1, block_size]
  keys, values = [], []
  for i in range(arch.n_layer):
    p = params['blocks'][str(i)]
    q, k, v = _query_key_value(p, arch, x)
    k = jax.lax.dynamic_update_slice_in_dim(cache['k'][i], k, position, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(cache['v'][i], v, position, axis=2)
    keys.append(k)
    values.append(v)
    x = _block_output(p, arch, x, q, k, v, visible)
  return _logits(params, x[:, 0]), {'k': jnp.stack(keys), 'v': jnp.stack(values)}


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
  """[..., V] -> the logits below the k-th largest set to -inf (ties with it kept)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def categorical_by_inversion(logits: jax.Array, uniforms: jax.Array) -> jax.Array:
  """logits [B, V] (-inf allowed), uniforms [B] in [0, 1) -> tokens [B] int32: the
  smallest index whose cumulative softmax probability exceeds u (so token v is drawn
  with probability softmax(logits)[v] when u ~ U[0, 1))."""
  cumulative = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  threshold = uniforms[:, None] * cumulative[:, -1:]
  count = jnp.sum(cumulative <= threshold, axis=-1)
  return jnp.minimum(count, logits.shape[-1] - 1).astype(jnp.int32)


def sample(params: Params, arch: GPTArch, prefix: jax.Array, steps: int,
           uniforms: jax.Array | None, temperature: float = 1.0, top_k: int | None = None
           ) -> jax.Array:
  """prefix [B, t0] int tokens (the conditioning, e.g. the class token), uniforms
  [B, steps] in [0, 1) (one per drawn token; None: greedy, the most likely token)
  -> [B, t0 + steps]: the prefix and `steps` tokens decoded one at a time with the KV
  cache, in one `lax.scan`. The sequence must fit the context: t0 + steps - 1 <= block_size."""
  batch, t0 = prefix.shape
  length = t0 + steps
  if t0 < 1 or length - 1 > arch.block_size:
    raise ValueError(f'a prefix of {t0} tokens and {steps} steps need a context of '
                     f'{length - 1} positions; the model has {arch.block_size}')
  buffer = jnp.zeros((batch, length), jnp.int32).at[:, :t0].set(prefix.astype(jnp.int32))

  def one_position(carry, position):
    buffer, cache = carry
    token = jax.lax.dynamic_index_in_dim(buffer, position, 1, keepdims=False)
    logits, cache = decode_step(params, arch, cache, token, position)
    logits = logits / temperature
    if top_k is not None:
      logits = top_k_logits(logits, top_k)
    if uniforms is None:
      chosen = jnp.argmax(logits, axis=-1)
    else:
      step = jnp.clip(position + 1 - t0, 0, steps - 1)
      chosen = categorical_by_inversion(
          logits, jax.lax.dynamic_index_in_dim(uniforms, step, 1, keepdims=False))
    following = jax.lax.dynamic_index_in_dim(buffer, position + 1, 1, keepdims=False)
    chosen = jnp.where(position + 1 < t0, following, chosen.astype(jnp.int32))
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, chosen, position + 1, 1)
    return (buffer, cache), None

  cache = empty_cache(arch, batch, params['pos_emb'].dtype)
  (buffer, _), _ = jax.lax.scan(one_position, (buffer, cache),
                                jnp.arange(length - 1))
  return buffer

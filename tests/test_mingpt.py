"""taming-transformers' minGPT (VQGAN's transformer prior) against taming 0.0.1's own GPT,
random weights, tiny sizes: logits with and without the KV cache, greedy sampling's
tokens, top-k masking."""

import numpy as np
import pytest

import bounds
import conftest
import jax
import jax.numpy as jnp
from dgan_jax.generators import mingpt
from dgan_jax.generators.checkpoint import unflatten

torch = pytest.importorskip('torch')
taming_gpt = pytest.importorskip('taming.modules.transformer.mingpt')

ARCH = mingpt.GPTArch(vocab_size=37, block_size=12, n_layer=2, n_head=4, n_embd=32)
# Max |ours - taming| / (taming's max - min) of the logits: 10x the README's figures
# (Correctness, VQGAN's transformer prior: 4.4e-07 of range, 1.1e-06 one position at a time
# with the KV cache), or 10x this CPU's measurement where smaller (5.5e-07 and 7.5e-07).
FORWARD_BOUND, CACHED_BOUND = 4.4e-6, 7.5e-6


def taming_logits(model, tokens):
  """taming's GPT on tokens [B, T] (T <= block_size) -> logits [B, T, vocab] float64."""
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens)))[0].numpy().astype(np.float64)


def assert_greedy_tokens_match(ours, expected, start, model):
  """Greedy sequences [B, T] whose tokens from position `start` on were chosen: equal
  wherever taming's logits (which decide each token given the ones before) put the best
  token ahead of the second by more than twice the cached logits' bound, and at every
  earlier position too (a near tie there may take the sequences apart)."""
  logits = taming_logits(model, expected[:, :-1])[:, start - 1:]
  margin = 2 * CACHED_BOUND * np.ptp(logits)
  bounds.assert_equal_where_decided(np.asarray(ours)[:, start:], np.asarray(expected)[:, start:],
                                    logits, margin, sequential_axis=1)
  np.testing.assert_array_equal(np.asarray(ours)[:, :start], expected[:, :start])


@pytest.fixture(scope='module')
def reference():
  torch.manual_seed(0)
  model = taming_gpt.GPT(ARCH.vocab_size, ARCH.block_size, n_layer=ARCH.n_layer,
                         n_head=ARCH.n_head, n_embd=ARCH.n_embd).eval()
  with torch.no_grad():   # larger than minGPT's N(0, 0.02), so that tokens differ
    for name, tensor in model.state_dict().items():
      if name.endswith('mask'):
        continue
      scale = 0.3 if name.endswith('bias') or 'ln' in name else 0.5
      tensor.copy_((1.0 if 'ln' in name and name.endswith('weight') else 0.0)
                   + scale * torch.randn_like(tensor))
  params = {}
  for name, value in model.state_dict().items():
    if name.endswith('mask'):
      continue
    value = value.numpy()
    if value.ndim == 2 and name != 'tok_emb.weight':
      value = value.T                      # Linear [out, in] -> [in, out]
    params[name.replace('.', '/')] = value
  assert {k: v.shape for k, v in params.items()} == mingpt.param_shapes(ARCH)
  return model, unflatten(params)


def test_logits_with_and_without_the_cache_match_taming(reference):
  """README, Correctness: minGPT's logits (4.4e-07) and with the KV cache (1.1e-06)."""
  model, params = reference
  tokens = np.random.RandomState(0).randint(0, ARCH.vocab_size, (3, ARCH.block_size))
  with torch.no_grad():
    expected = model(torch.from_numpy(tokens))[0].numpy()
  logits = mingpt.forward(params, ARCH, jnp.asarray(tokens))
  assert conftest.relative_error(logits, expected) < FORWARD_BOUND
  cache = mingpt.empty_cache(ARCH, 3)
  step = jax.jit(lambda c, t, p: mingpt.decode_step(params, ARCH, c, t, p))
  for position in range(ARCH.block_size):
    step_logits, cache = step(cache, jnp.asarray(tokens[:, position]), position)
    assert conftest.relative_error(step_logits, expected[:, position]) < CACHED_BOUND, position


def test_greedy_sampling_equals_taming_sample(reference):
  """README: greedy sampling gives taming's `sample(..., sample=False)` tokens (where no
  near tie decides them: `assert_greedy_tokens_match`)."""
  model, params = reference
  prefix = np.array([[5], [11], [30]])
  steps = ARCH.block_size   # the context is full at the last step (1 + 11 positions)
  with torch.no_grad():
    expected = taming_gpt.sample(model, torch.from_numpy(prefix), steps, sample=False).numpy()
  tokens = jax.jit(lambda p: mingpt.sample(params, ARCH, p, steps, None))(jnp.asarray(prefix))
  assert_greedy_tokens_match(tokens, expected, 1, model)
  assert len(np.unique(expected[:, 1:])) > 5   # the sequences are not one repeated token
  # A longer prefix is kept as given and continued.
  longer = np.array([[5, 1, 2], [11, 0, 36], [30, 30, 4]])
  with torch.no_grad():
    expected = taming_gpt.sample(model, torch.from_numpy(longer), 5, sample=False).numpy()
  assert_greedy_tokens_match(mingpt.sample(params, ARCH, jnp.asarray(longer), 5, None),
                             expected, 3, model)
  # The same with top-k and a temperature (greedy picks the same maximum).
  with torch.no_grad():
    expected = taming_gpt.sample(model, torch.from_numpy(prefix[:, :1]), 4, temperature=0.7,
                                 sample=False, top_k=3).numpy()
  tokens = mingpt.sample(params, ARCH, jnp.asarray(prefix), 4, None, temperature=0.7,
                         top_k=3)
  assert_greedy_tokens_match(tokens, expected, 1, model)   # the same argmax as the logits'



def test_top_k_masking_equals_taming():
  rng = np.random.RandomState(2)
  logits = rng.randint(-3, 4, (6, 9)).astype(np.float32)   # many ties, at the k-th value too
  for k in (1, 3, 5):
    expected = taming_gpt.top_k_logits(torch.from_numpy(logits), k).numpy()
    np.testing.assert_array_equal(mingpt.top_k_logits(jnp.asarray(logits), k), expected)


def test_inversion_draws_each_token_with_its_softmax_probability():
  """u on an even grid of [0, 1): each token is drawn for a share of the grid equal to its
  softmax probability (computed here in float64); masked tokens are never drawn."""
  logits = np.array([[0.3, -1.0, 2.0, -np.inf, 0.0, 1.1]], np.float32)
  grid = (np.arange(100_000) + 0.5) / 100_000
  tokens = mingpt.categorical_by_inversion(
      jnp.repeat(jnp.asarray(logits), len(grid), axis=0), jnp.asarray(grid, jnp.float32))
  shares = np.bincount(np.asarray(tokens), minlength=6) / len(grid)
  finite = np.where(np.isfinite(logits[0]), logits[0], -np.inf).astype(np.float64)
  probabilities = np.exp(finite - finite.max()) / np.exp(finite - finite.max()).sum()
  np.testing.assert_allclose(shares, probabilities, atol=2e-5)
  assert shares[3] == 0
  # u -> 1 takes the last token of positive probability, never a masked one.
  last = mingpt.categorical_by_inversion(jnp.asarray([[1.0, 2.0, -np.inf]]),
                                         jnp.asarray([0.99999994]))
  assert int(last[0]) == 1


def test_drawn_tokens_follow_their_numbers_not_the_batch(reference):
  """Sample b uses its own uniforms: the same numbers give the same tokens in a batch of
  1 or 3 (two compiled programs: equal wherever u is further from the ends of its token's
  share of the cumulative softmax than the float error reaches); draws stay inside the
  top k."""
  _, params = reference
  uniforms = jax.random.uniform(jax.random.key(7), (3, 6))
  prefix = jnp.asarray([[5], [11], [30]])
  together = mingpt.sample(params, ARCH, prefix, 6, uniforms, top_k=4)
  alone = np.concatenate([mingpt.sample(params, ARCH, prefix[b:b + 1], 6, uniforms[b:b + 1],
                                        top_k=4) for b in range(3)])
  logits = mingpt.forward(params, ARCH, together[:, :-1])
  kept = np.asarray(logits, np.float64)
  kept = np.where(kept < np.sort(kept, -1)[..., -4:-3], -np.inf, kept)    # the top 4
  probabilities = np.exp(kept - kept.max(-1, keepdims=True))
  cumulative = np.cumsum(probabilities / probabilities.sum(-1, keepdims=True), -1)
  # A logit error e moves the cumulative probabilities by at most 2 e, and the top two
  # inversion scores differ by twice u's distance from its interval's nearer end.
  margin = 4 * CACHED_BOUND * np.ptp(np.asarray(logits))
  bounds.assert_equal_where_decided(alone[:, 1:], np.asarray(together)[:, 1:],
                                    bounds.inversion_scores(cumulative, uniforms), margin,
                                    sequential_axis=1)
  top4 = np.asarray(jax.lax.top_k(logits, 4)[1])
  chosen = np.asarray(together[:, 1:])
  assert all(chosen[b, t] in top4[b, t] for b in range(3) for t in range(6))
  assert len(np.unique(chosen)) > 3   # not a single repeated token
  with pytest.raises(ValueError, match='context'):
    mingpt.sample(params, ARCH, prefix, ARCH.block_size + 1, None)

"""Gemma 3's attention pattern in every implementation: window 512, five sliding layers to one
global, sequences past the window; and the KV cache's ring buffers for the local layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_cases import compare, inputs
from gemmax.models import ModelConfig, Transformer
from gemmax.models.kv_cache import init_cache
from gemmax.ops import attention
from gemmax.ops.pallas import attention_pallas
from gemmax.ops.splash import attention_splash

W, T = 512, 600  # the 270M / 1B window; a sequence past it

TINY = ModelConfig.preset(
  "gemma3-tiny",
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=6,
  num_attention_heads=2,
  num_key_value_heads=1,
  head_dim=16,
  sliding_window=W,
  max_position_embeddings=2048,
)

IMPLS = {
  "xla_chunked": lambda q, k, v, **kw: attention(q, k, v, impl="xla_chunked", **kw),
  "pallas": lambda q, k, v, **kw: attention_pallas(q, k, v, block_q=128, block_k=128, **kw),
  "splash": lambda q, k, v, **kw: attention_splash(q, k, v, interpret=True, **kw),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("window", [W, None])  # a local layer and the global one
def test_impl_at_window_512_values_and_gradients(impl, window):
  q, k, v = inputs(b=1, t=T, n=2, kh=1, h=32)
  kw = dict(scale=168**-0.5, causal=True, sliding_window=window, softcap=None, segment_ids=None)
  compare(IMPLS[impl], q, k, v, 2e-5, **kw)


def _model(impl):
  return Transformer(TINY.replace(attn_impl=impl), rngs=nnx.Rngs(0))


def test_the_pattern_is_five_local_to_one_global():
  assert [TINY.layer_window(i) for i in range(6)] == [W] * 5 + [None]
  m = _model("xla")
  assert [layer.self_attn.sliding_window for layer in m.layers] == [W] * 5 + [None]


@pytest.mark.parametrize("impl", ["xla_chunked", "pallas", "splash"])
def test_model_logits_equal_xla_past_the_window(impl):
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (1, T)))
  ref = np.asarray(_model("xla")(ids))
  # the window matters here: without it the last positions' logits differ
  unwindowed = Transformer(TINY.replace(sliding_window=None), rngs=nnx.Rngs(0))
  assert np.abs(np.asarray(unwindowed(ids))[0, W:] - ref[0, W:]).max() > 1e-3
  got = np.asarray(_model(impl)(ids))
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)


def test_cache_holds_local_layers_at_the_window():
  cache = init_cache(TINY, batch=1, max_len=8192)
  sizes = [layer.k.shape[2] for layer in cache.layers]
  assert sizes == [W] * 5 + [8192]
  assert all(layer.v.shape == layer.k.shape for layer in cache.layers)


def test_prefill_then_decode_past_the_window_equals_the_full_forward():
  """Prefill 500 tokens, then decode 40 one at a time through the 512-slot rings: each step's
  logits equal the uncached forward of the whole sequence."""
  m = _model("xla")
  ids = jnp.asarray(np.random.RandomState(1).randint(0, 64, (1, 540)))
  full = np.asarray(m(ids))
  step = nnx.jit(lambda m, x, pos, c: m(x, positions=pos, cache=c))
  cache = init_cache(TINY, batch=1, max_len=1024)
  logits, cache = step(m, ids[:, :500], jnp.arange(500)[None], cache)
  got = [np.asarray(logits)[:, -1]]
  for t in range(500, 539):
    logits, cache = step(m, ids[:, t : t + 1], jnp.full((1, 1), t), cache)
    got.append(np.asarray(logits)[:, -1])
  np.testing.assert_allclose(np.stack(got, 1), full[:, 499:539], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_270m_decode_at_8192_keeps_local_layers_at_the_window():
  """The real 270M architecture (bf16) with an 8,192-token cache: the 15 local layers hold 512
  slots each, the 3 global ones 8,192; the compiled decode step takes and returns exactly that
  cache (donated, aliased), against an all-global variant's 4.6x larger one."""
  from gemmax.models.sizing import abstract_model

  def compiled(cfg, n=8192):
    graphdef, state = nnx.split(abstract_model(cfg))
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, n))

    def decode(state, ids, pos, cache):
      return nnx.merge(graphdef, state)(ids, positions=pos, cache=cache)

    one = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    c = jax.jit(decode, donate_argnums=3).lower(state, one, one, cache).compile()
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    return cache, nbytes, c.memory_analysis()

  cfg = ModelConfig.preset("gemma3-270m", dtype="bfloat16", param_dtype="bfloat16")
  cache, nbytes, mem = compiled(cfg)
  assert [layer.k.shape[2] for layer in cache.layers] == ([512] * 5 + [8192]) * 3
  kv = 2 * 256 * 2  # k and v, head_dim 256, bf16, one kv head
  slots = 15 * 512 + 3 * 8192
  assert nbytes == slots * (kv + 8) + 18 * 4  # + int32 position, segment per slot; 18 indices
  logits = cfg.vocab_size * 4
  assert mem.alias_size_in_bytes == nbytes  # the cache is updated in place
  assert nbytes + logits <= mem.output_size_in_bytes <= nbytes + logits + 4096
  _, global_bytes, global_mem = compiled(cfg.replace(sliding_window=None))
  assert global_bytes > 4 * nbytes and global_mem.alias_size_in_bytes == global_bytes
  print(
    f"decode step at 8192: cache {nbytes / 2**20:.1f} MiB (all-global {global_bytes / 2**20:.1f}), "
    f"temp {mem.temp_size_in_bytes / 2**20:.1f} MiB"
  )

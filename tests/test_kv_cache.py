"""KV cache: cached prefill + decode equals the uncached forward; ring buffers stay W long."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemmax.models import ModelConfig, Transformer
from gemmax.models.kv_cache import clear_cache, init_cache


def _model(preset):
  return Transformer(ModelConfig.preset(preset), rngs=nnx.Rngs(0))


@nnx.jit
def _run(model, ids, positions, segment_ids, cache):
  return model(ids, positions=positions, segment_ids=segment_ids, cache=cache)


@pytest.mark.parametrize("preset", ["gemma2-tiny", "llama3-tiny"])
@pytest.mark.parametrize("chunks", [(20,), (3, 1, 1, 12, 1, 1, 1), (1,) * 20])
def test_cached_chunks_match_full_forward(preset, chunks):
  """Any split of a 20-token sequence (window 8) into prefill/decode chunks gives the same logits."""
  model = _model(preset)
  ids = jax.random.randint(jax.random.key(1), (2, sum(chunks)), 0, 256)
  full = model(ids)
  cache = init_cache(model.config, 2, 32)
  outs, start = [], 0
  for n in chunks:
    pos = jnp.broadcast_to(jnp.arange(start, start + n), (2, n))
    logits, cache = _run(model, ids[:, start : start + n], pos, None, cache)
    outs.append(logits)
    start += n
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5, rtol=2e-5)
  assert int(cache.index) == sum(chunks)


def test_left_padding_is_invisible():
  """A left-padded row (segment 0 on pads, positions from 0 at the first real token) equals the
  unpadded row."""
  model = _model("gemma2-tiny")
  ids = jax.random.randint(jax.random.key(2), (1, 11), 0, 256)
  ref = model(ids)
  pad = 5
  padded = jnp.concatenate([jnp.zeros((1, pad), ids.dtype), ids], 1)
  seg = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones((1, 11), jnp.int32)], 1)
  pos = jnp.maximum(jnp.arange(pad + 11) - pad, 0)[None]
  cache = init_cache(model.config, 1, 24)
  logits, cache = _run(model, padded[:, :10], pos[:, :10], seg[:, :10], cache)
  outs = [logits[:, pad:]]
  for i in range(10, pad + 11):
    logits, cache = _run(model, padded[:, i : i + 1], pos[:, i : i + 1], seg[:, i : i + 1], cache)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), ref, atol=2e-5, rtol=2e-5)


def test_ring_size_independent_of_max_len():
  cfg = ModelConfig.preset("gemma2-tiny")
  for max_len in (16, 64, 1024):
    cache = init_cache(cfg, 3, max_len)
    assert cache.layers[0].k.shape == (3, 2, cfg.sliding_window, 16)  # layer 0 is local
    assert cache.layers[1].k.shape == (3, 2, max_len, 16)  # layer 1 is global
  assert jax.tree_util.tree_structure(cache)  # a pytree


def _prefill(model):
  """(state, jitted (state, ids, positions, cache) -> (logits, cache)) for compiled-cost checks."""
  graphdef, state = nnx.split(model)
  return state, jax.jit(
    lambda st, ids, pos, cache: nnx.merge(graphdef, st)(ids, positions=pos, cache=cache)
  )


def test_prefill_into_a_fresh_cache_does_not_scale_with_max_len():
  """The first chunk attends to itself only: its cost is that of the prompt, whatever max_len."""
  model = _model("llama3-tiny")
  state, prefill = _prefill(model)
  ids = jax.random.randint(jax.random.key(3), (2, 16), 0, 256)
  pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
  flops = []
  for max_len in (32, 4096):
    cache = init_cache(model.config, 2, max_len)
    assert all(layer.fresh for layer in cache.layers)
    compiled = prefill.lower(state, ids, pos, cache).compile()
    flops.append(compiled.cost_analysis()["flops"])
    _, after = compiled(state, ids, pos, cache)
    assert not any(layer.fresh for layer in after.layers)
  assert flops[1] < 1.1 * flops[0], flops


def test_clear_cache_equals_init_cache():
  cfg = ModelConfig.preset("gemma2-tiny")
  model = _model("gemma2-tiny")
  ids = jax.random.randint(jax.random.key(4), (2, 12), 0, 256)
  _, used = _run(
    model, ids, jnp.broadcast_to(jnp.arange(12), (2, 12)), None, init_cache(cfg, 2, 16)
  )
  cleared, want = clear_cache(used), init_cache(cfg, 2, 16)
  assert jax.tree_util.tree_structure(cleared) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree.leaves(cleared), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_long_prefill_into_a_fresh_cache_uses_the_chunked_kernel():
  """A fresh cache's first chunk takes the uncached attention path, so a long prompt gets the
  memory-bounded kernel instead of [T, T] logits per head."""
  model = _model("llama3-tiny")
  cfg = model.config
  state, prefill = _prefill(model)
  t = 4096  # CPU_CHUNKED_MIN_KV_LEN: impl="auto" picks xla_chunked from here on
  ids = jnp.zeros((1, t), jnp.int32)
  pos = jnp.arange(t)[None]
  cache = init_cache(cfg, 1, t + 8)
  mem = prefill.lower(state, ids, pos, cache).compile().memory_analysis()
  logits_bytes = cfg.num_attention_heads * t * t * 4  # one layer's f32 attention logits
  assert mem.temp_size_in_bytes < logits_bytes / 4, (mem.temp_size_in_bytes, logits_bytes)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32])
def test_raw_slices_are_the_lax_ops_bit_for_bit(dtype):
  from gemmax.ops import raw_slices

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 3, 10, 4)) * 100, dtype)
  u = jnp.asarray(rng.standard_normal((2, 3, 1, 4)) * 100, jnp.float32)
  bits = lambda a: np.asarray(a).view(np.uint8)
  at = (0, 0, jnp.int32(7), 0)
  np.testing.assert_array_equal(
    bits(raw_slices.dynamic_update_slice(x, u, at)),
    bits(jax.lax.dynamic_update_slice(x, u.astype(dtype), at)),
  )
  np.testing.assert_array_equal(
    bits(raw_slices.dynamic_slice_in_dim(x, jnp.int32(3), 5, 2)),
    bits(jax.lax.dynamic_slice_in_dim(x, 3, 5, axis=2)),
  )
  idx = (slice(None), slice(None), jnp.array([9, 0]))
  upd = jnp.concatenate([u, -u], axis=2)
  np.testing.assert_array_equal(
    bits(raw_slices.set_at(x, idx, upd)), bits(x.at[idx].set(upd.astype(dtype)))
  )


def test_bf16_cache_write_is_not_upcast():
  """A bf16 cache takes its decode token in place: the compiled write holds no float32 copy of
  the cache buffer (XLA:CPU upcast bf16 dynamic-update-slices: two cache copies per layer)."""
  model = Transformer(ModelConfig.preset("llama3-tiny", dtype="bfloat16"), rngs=nnx.Rngs(0))
  cache = init_cache(model.config, 2, 32)
  ids = jnp.ones((2, 1), jnp.int32)
  pos = jnp.full((2, 1), 3, jnp.int32)
  hlo = _run.lower(model, ids, pos, jnp.ones((2, 1), jnp.int32), cache).compile().as_text()
  k = cache.layers[0].k.shape
  assert f"f32[{','.join(map(str, k))}]" not in hlo, "a float32 copy of a cache buffer"

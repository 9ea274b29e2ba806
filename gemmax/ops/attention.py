"""`attention`: one entry point, several implementations chosen by `impl`."""

from __future__ import annotations

import jax

from gemmax.ops.xla import attention_xla
from gemmax.ops.xla_cpu import attention_xla_cpu

# "xla": the plain XLA implementation; "xla_cpu": the same computation with XLA:CPU's measured
# speed-ups (gemmax.ops.xla_cpu), what "auto" picks on CPU below CPU_CHUNKED_MIN_KV_LEN keys.
IMPLS = ("auto", "xla", "xla_cpu", "xla_chunked", "pallas", "splash", "cudnn")
# Not public: what "auto" picks for long causal self-attention on CPU (see CPU_BLOCKS_MIN_LEN).
_INTERNAL = ("xla_blocks",)

# On CPU the einsum attention is fastest while its [T, S] logits are small; past this many keys
# the chunked path keeps memory O(seq) (threshold chosen for memory, not a measured crossover).
CPU_CHUNKED_MIN_KV_LEN = 4096
# From this many tokens a causal self-attention on CPU runs in query blocks (gemmax.ops.qblocks):
# two or more blocks. Measured on SmolLM2-135M's attention in benchmarks/RESULTS.md ("Real model").
CPU_BLOCKS_MIN_LEN = 256


def choose_impl(q, k, *, softcap, segment_ids, backend=None) -> str:
  """What impl="auto" resolves to for these arguments on `backend` (default: jax's)."""
  backend = backend or jax.default_backend()
  t, s, h = q.shape[1], k.shape[1], q.shape[3]
  if backend == "gpu":
    return "pallas"
  if backend == "tpu":
    # Splash is self-attention only and tiles head_dim in 128-lane vregs.
    return "splash" if t == s and h % 128 == 0 else "xla_chunked"
  if s >= CPU_CHUNKED_MIN_KV_LEN:
    return "xla_chunked"
  return "xla_blocks" if t == s and t >= CPU_BLOCKS_MIN_LEN else "xla_cpu"


def attention(
  q,
  k,
  v,
  *,
  scale=None,
  causal=True,
  sliding_window=None,
  softcap=None,
  segment_ids=None,
  impl="auto",
  q_positions=None,
  kv_positions=None,
):
  """Multi-head attention with GQA, sliding window and logit soft-capping.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim], heads a multiple
  of kv_heads. `segment_ids` [batch, seq] (or a (q_seg, kv_seg) pair) blocks attention across
  packed examples. `q_positions`/`kv_positions` [batch, len] give explicit positions (KV cache);
  that path uses "xla" or "xla_cpu" (the backend's, unless one of them is asked for). Key k is
  visible to query q iff `q - W < k <= q`. On CPU, "auto" gives causal self-attention of
  CPU_BLOCKS_MIN_LEN tokens or more the internal "xla_blocks" (query blocks, gemmax.ops.qblocks),
  which falls back to "xla_cpu" for anything else.
  """
  if impl not in IMPLS + _INTERNAL:
    raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
      f"attention expects [batch, seq, heads, head_dim]; got q{q.shape} k{k.shape} v{v.shape}"
    )
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} are not a multiple of kv heads {k.shape[2]}")
  if sliding_window is not None and sliding_window < 1:
    raise ValueError(f"sliding_window must be >= 1 or None; got {sliding_window}")
  if scale is None:
    scale = q.shape[-1] ** -0.5
  kw = dict(
    scale=scale,
    causal=causal,
    sliding_window=sliding_window,
    softcap=softcap,
    segment_ids=segment_ids,
  )
  if q_positions is not None or kv_positions is not None:
    # Decoding with a KV cache: arbitrary positions, q_len != kv_len.
    cpu = impl == "xla_cpu" or (impl != "xla" and jax.default_backend() == "cpu")
    fn = attention_xla_cpu if cpu else attention_xla
    return fn(q, k, v, q_positions=q_positions, kv_positions=kv_positions, **kw)
  if impl == "auto":
    impl = choose_impl(q, k, softcap=softcap, segment_ids=segment_ids)
  if impl == "xla":
    return attention_xla(q, k, v, **kw)
  if impl == "xla_cpu":
    return attention_xla_cpu(q, k, v, **kw)
  if impl == "xla_blocks":
    if not causal or k.shape[1] != q.shape[1]:  # the blocks are for causal self-attention
      return attention_xla_cpu(q, k, v, **kw)
    from gemmax.ops.qblocks import attention_qblocks

    return attention_qblocks(q, k, v, **kw)
  if impl == "xla_chunked":
    from gemmax.ops.chunked import attention_xla_chunked

    return attention_xla_chunked(q, k, v, **kw)
  if impl == "pallas":
    from gemmax.ops.pallas import attention_pallas

    return attention_pallas(q, k, v, **kw)
  if impl == "splash":
    from gemmax.ops.splash import attention_splash

    return attention_splash(q, k, v, **kw)
  from gemmax.ops.cudnn import attention_cudnn

  return attention_cudnn(q, k, v, **kw)

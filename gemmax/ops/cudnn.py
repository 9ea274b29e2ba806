"""GPU path through cuDNN fused attention (`jax.nn.dot_product_attention`), no softcap.

cuDNN has no logit soft-capping and no segment ids in this API, so those raise rather than being
dropped. The window maps to `local_window_size=(W - 1, right)`: W keys including the query itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_supported(q, k, *, softcap, segment_ids, backend=None):
  """Raises ValueError naming what the cudnn impl cannot honour."""
  backend = backend or jax.default_backend()
  if softcap is not None:
    raise ValueError(
      f"attention impl 'cudnn' cannot apply softcap={softcap}; use impl='pallas' (GPU) or 'xla'"
    )
  if segment_ids is not None:
    raise ValueError("attention impl 'cudnn' does not take segment_ids; use impl='pallas' or 'xla'")
  if q.shape[1] != k.shape[1]:
    raise ValueError(
      f"attention impl 'cudnn' needs q_len == kv_len; got {q.shape[1]} and {k.shape[1]}"
    )
  if backend != "gpu":
    raise ValueError(f"attention impl 'cudnn' needs a GPU; the backend is {backend!r}")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention impl 'cudnn' needs bf16/fp16 inputs; got {q.dtype}")


def dpa_kwargs(seq: int, *, scale, causal, sliding_window):
  """Keyword arguments for jax.nn.dot_product_attention that express our mask exactly."""
  kw = dict(scale=scale, is_causal=bool(causal))
  if sliding_window is not None:
    # Keys q - (W - 1) .. q (+ everything to the right when not causal).
    kw["local_window_size"] = (int(sliding_window) - 1, 0 if causal else seq)
  return kw


def attention_cudnn(
  q, k, v, *, scale, causal, sliding_window, softcap, segment_ids, implementation="cudnn"
):
  """q: [B, T, N, H]; k, v: [B, T, K, H]. `implementation="xla"` only exists for testing the mask."""
  if implementation == "cudnn":
    check_supported(q, k, softcap=softcap, segment_ids=segment_ids)
  elif softcap is not None or segment_ids is not None:
    raise ValueError("dot_product_attention path cannot apply softcap or segment_ids")
  kw = dpa_kwargs(q.shape[1], scale=scale, causal=causal, sliding_window=sliding_window)
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation, **kw)

"""Causal self-attention in static query blocks, each against the keys it can see: impl
"xla_blocks", which `choose_impl` gives causal self-attention of two or more blocks on CPU.

Why: `attention_xla_cpu` forms the whole [T, T] logits and runs its softmax passes
over all of them, the masked upper triangle included. For a 2,048-token prompt of SmolLM2-135M
(9 heads) that is 38M float32 logits per layer, and those passes were most of the prefill. Here
query block [lo, hi) attends to keys [start, hi) only (start > 0 with a sliding window): about
half the logits at 2,048 tokens, each block's logits small enough to stay in cache. 128-query
blocks, measured on SmolLM2-135M's attention (bf16, batch 8, forward + backward): 256 tokens
24 -> 17 ms, 512 tokens 132 -> 84 ms, 1,024 tokens 540 -> 300 ms (256-query blocks: 330 ms); a
2,048-token forward the same as with 256-query blocks. Every block is attention_xla_cpu on a slice
(its default positions place the queries last among the keys, which is where they are), so values
equal the unblocked ones up to the order in which key and value gradients are summed.
"""

from __future__ import annotations

import jax.numpy as jnp

from gemmax.ops.common import split_segments
from gemmax.ops.xla_cpu import attention_xla_cpu

BLOCK = 128


def attention_qblocks(
  q, k, v, *, scale, causal, sliding_window, softcap, segment_ids, block: int = BLOCK
):
  """q: [B, T, N, H]; k, v: [B, T, K, H] (self-attention, causal). Returns [B, T, N, H]."""
  t = q.shape[1]
  if not causal or k.shape[1] != t:
    raise ValueError("attention_qblocks: causal self-attention only")
  q_seg, k_seg = split_segments(segment_ids)
  kw = dict(scale=scale, causal=True, sliding_window=sliding_window, softcap=softcap)
  outs = []
  for lo in range(0, t, block):
    hi = min(lo + block, t)
    start = 0 if sliding_window is None else max(0, lo - sliding_window + 1)
    segs = None if q_seg is None else (q_seg[:, lo:hi], k_seg[:, start:hi])
    sl = (slice(None), slice(start, hi))
    outs.append(attention_xla_cpu(q[:, lo:hi], k[sl], v[sl], segment_ids=segs, **kw))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)

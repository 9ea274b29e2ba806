"""Self-attention block: projections, QK-norm, RoPE, GQA, local/global window, softcap, KV cache."""

from __future__ import annotations

import jax
from flax import nnx

from gemmax.models.layers import Linear, RMSNorm, project_shared
from gemmax.models.rope import apply_rope, inverse_frequencies
from gemmax.ops import attention
from gemmax.ops.decode import attention_decode


class Attention(nnx.Module):
  """q/k/v/o projections around `gemmax.ops.attention`.

  Layer `layer_idx` gets its window and RoPE from `config.layer_window` / `config.layer_rope`;
  with `config.qk_norm`, queries and keys are RMS-normed over head_dim before RoPE.
  """

  def __init__(self, config, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, n, k, h = (
      config.hidden_size,
      config.num_attention_heads,
      config.num_key_value_heads,
      config.head_dim,
    )
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Linear(d, n * h, axes=("embed", "q_heads"), **kw)
    self.k_proj = Linear(d, k * h, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(d, k * h, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(n * h, d, axes=("q_heads", "embed"), **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
    self.sliding_window = config.layer_window(layer_idx)
    self.scale = config.query_scale
    self.softcap = config.attn_logit_softcapping
    self.impl = config.attn_impl
    self.rope = (h, *config.layer_rope(layer_idx))  # static; frequencies built per call
    if config.qk_norm:
      norm = dict(eps=config.rms_norm_eps, offset=config.norm_offset, param_dtype=param_dtype)
      self.q_norm = RMSNorm(h, **norm)
      self.k_norm = RMSNorm(h, **norm)
    self.qk_norm = config.qk_norm

  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids=None, cache=None):
    """x: [B, T, D]; positions, segment_ids: [B, T]. Returns [B, T, D] (and the new cache)."""
    b, t, _ = x.shape
    q, k, v = project_shared((self.q_proj, self.k_proj, self.v_proj), x)
    q = q.reshape(b, t, self.num_heads, self.head_dim)
    k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
    v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = inverse_frequencies(*self.rope)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    extra, impl = {}, self.impl
    if cache is not None:
      # The cache stores k/v and returns the keys visible now plus explicit positions/segments.
      first = cache.fresh
      kc, vc, extra, cache = cache.update(k, v, positions=positions, segment_ids=segment_ids)
      if t == 1:  # one token per row: visit only the written slots (cost O(tokens so far))
        out = attention_decode(
          q,
          kc,
          vc,
          scale=self.scale,
          sliding_window=self.sliding_window,
          softcap=self.softcap,
          written=cache.written(),
          **extra,
        )
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), cache
      if first:  # every other slot is empty: the chunk attends to itself, uncached path and kernels
        extra = {}
      else:
        k, v = kc, vc  # with explicit positions: an XLA impl (gemmax.ops.attention)
        segment_ids = extra.pop("segment_ids")
    out = attention(
      q,
      k,
      v,
      scale=self.scale,
      causal=True,
      sliding_window=self.sliding_window,
      softcap=self.softcap,
      segment_ids=segment_ids,
      impl=impl,
      **extra,
    )
    out = self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))
    return out if cache is None else (out, cache)

"""The decoder-only Transformer (Gemma 2, Gemma 3, Llama: the config's fields say which parts)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.models.attention import Attention
from gemmax.models.config import ModelConfig
from gemmax.models.head import Head, softcap
from gemmax.models.layers import MLP, Embed, Linear, RMSNorm
from gemmax.ops.matmul import matmul, matmul_t
from gemmax.sharding import HIDDEN, constrain

_REMAT_POLICIES = {
  "full": None,  # recompute everything in the backward pass
  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dtype(name):
  return jnp.dtype(name)


class Block(nnx.Module):
  """One decoder layer; `config.post_norms` adds norms after attention and MLP (pre+post norms)."""

  def __init__(self, config: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
    dt, pdt = _dtype(config.dtype), _dtype(config.param_dtype)
    norm = lambda: RMSNorm(
      config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset, param_dtype=pdt
    )
    self.input_layernorm = norm()
    self.self_attn = Attention(config, layer_idx, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.post_attention_layernorm = norm()
    if config.post_norms:
      self.pre_feedforward_layernorm = norm()
      self.post_feedforward_layernorm = norm()
    self.mlp = MLP(config, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.post_norms = config.post_norms

  def __call__(self, h, positions, segment_ids=None, cache=None):
    attn = self.self_attn(self.input_layernorm(h), positions, segment_ids, cache)
    if cache is not None:
      attn, cache = attn
    if self.post_norms:
      h = h + self.post_attention_layernorm(attn)
      h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
    else:
      h = h + attn
      h = h + self.mlp(self.post_attention_layernorm(h))
    return h if cache is None else (h, cache)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions that restart at 0 where the segment id changes: [B, T] -> [B, T]."""
  t = segment_ids.shape[-1]
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
  starts = jnp.concatenate(
    [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
    axis=1,
  )
  return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


class Transformer(nnx.Module):
  """`model(input_ids, positions=None, segment_ids=None, cache=None) -> logits [B, T, vocab]`.

  Logits are float32 (the config's final soft-cap applied). With a cache, returns (logits, cache).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dt, pdt = _dtype(config.dtype), _dtype(config.param_dtype)
    self.embed_tokens = Embed(
      config.vocab_size, config.hidden_size, dtype=dt, param_dtype=pdt, rngs=rngs
    )
    self.layers = nnx.List([Block(config, i, rngs=rngs) for i in range(config.num_hidden_layers)])
    self.norm = RMSNorm(
      config.hidden_size, eps=config.rms_norm_eps, offset=config.norm_offset, param_dtype=pdt
    )
    if not config.tie_word_embeddings:
      self.lm_head = Linear(
        config.hidden_size,
        config.vocab_size,
        axes=("embed", "vocab"),
        dtype=dt,
        param_dtype=pdt,
        rngs=rngs,
      )

  def hidden_states(
    self, input_ids, positions=None, segment_ids=None, cache=None, *, inputs_embeds=None
  ):
    """Final-normed hidden states [B, T, D] (and the new cache when one is given).

    `inputs_embeds` [B, T, D] replaces the (scaled, for Gemma) embedding lookup, as in
    transformers >= 5 where the sqrt(hidden) normalizer lives in the embedding module.
    """
    cfg = self.config
    if input_ids is None:
      input_ids = jnp.zeros(inputs_embeds.shape[:2], jnp.int32)
    if positions is None:
      positions = (
        segment_positions(segment_ids)
        if segment_ids is not None
        else jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
      )
    if inputs_embeds is not None:
      h = inputs_embeds
    else:
      h = self.embed_tokens(input_ids)
      if cfg.scale_embeddings:  # normalizer cast to the activation dtype first
        h = h * jnp.asarray(cfg.hidden_size**0.5, dtype=h.dtype)
    h = constrain(h, HIDDEN)  # block boundary: a no-op unless under jax.set_mesh(mesh)
    if cache is not None:
      new_layers = []
      for block, layer_cache in zip(self.layers, cache.layers):
        h, layer_cache = block(h, positions, segment_ids, layer_cache)
        new_layers.append(layer_cache)
      return self.norm(h), cache.replace_layers(new_layers)
    run = lambda block, h: block(h, positions, segment_ids)
    if cfg.remat != "none":
      run = nnx.remat(run, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=True)
    for block in self.layers:
      h = constrain(run(block, h), HIDDEN)
    return self.norm(h)

  def output_projection(self) -> tuple[jax.Array, bool]:
    """(weight, vocab_major): the output projection as stored, [vocab, hidden] when vocab_major
    (tied embeddings) else [hidden, vocab] (lm_head). Losses take it as stored: a transposed
    view would send bf16 products down XLA:CPU's slow path (gemmax.ops.matmul)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.embedding[...], True
    # the sampler's decode copy stores lm_head [out, in] (gemmax.sampling.layout.OutInLinear)
    return self.lm_head.kernel[...], getattr(self.lm_head, "out_in", False)

  def output_head(self) -> Head:
    """The one output head the loss, distillation and the sampler use: the projection as stored
    (see `output_projection`) and the final soft-cap or None."""
    w, vocab_major = self.output_projection()
    return Head(w, vocab_major, self.config.final_logit_softcapping)

  def output_weight(self) -> jax.Array:
    """The [hidden, vocab] output projection (tied embeddings transposed, or lm_head)."""
    w, vocab_major = self.output_projection()
    return w.T if vocab_major else w

  def logits(self, h: jax.Array) -> jax.Array:
    """[..., D] hidden states -> float32 [..., vocab] logits through `output_head` (what the
    sampler calls; few-row products take matmul_t's decode form)."""
    head = self.output_head()
    w = head.weight.astype(h.dtype)
    mm = matmul_t if head.vocab_major else matmul
    return softcap(mm(h, w, preferred_element_type=jnp.float32), head.softcap)

  def __call__(
    self, input_ids, positions=None, segment_ids=None, cache=None, *, inputs_embeds=None
  ):
    out = self.hidden_states(input_ids, positions, segment_ids, cache, inputs_embeds=inputs_embeds)
    if cache is not None:
      h, cache = out
      return self.logits(h), cache
    return self.logits(out)

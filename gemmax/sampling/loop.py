"""Jitted prefill and decode: pure functions of (graphdef, state, cache, ...).

`generate_loop` runs prefill and every decode step inside one jit (a `lax.while_loop` that stops
early when every row is done); `prefill_step` / `decode_step` serve the streaming Python loop.
`graphdef` and `state` may be the decode copy of gemmax.sampling.layout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.sampling.select import choose

_SAMPLING = ("graphdef", "greedy", "top_k", "use_top_p")


def _forward(graphdef, state, tokens, positions, segments, cache):
  model = nnx.merge(graphdef, state)
  h, cache = model.hidden_states(tokens, positions=positions, segment_ids=segments, cache=cache)
  return model.logits(h[:, -1]), cache  # only the last position's logits: [B, V], not [B, T, V]


def _pick(logits, rng, temperature, top_p, greedy, top_k, use_top_p):
  return choose(
    logits,
    rng,
    greedy=greedy,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p if use_top_p else None,
  )


def _prefill(state, tokens, positions, segments, cache, rng, temperature, top_p, *, graphdef, **kw):
  """Left-padded prompts [B, P] -> (first tokens [B], their logprobs [B], cache)."""
  logits, cache = _forward(graphdef, state, tokens, positions, segments, cache)
  return (*_pick(logits, rng, temperature, top_p, **kw), cache)


def _decode(state, token, position, cache, rng, temperature, top_p, *, graphdef, **kw):
  """One token per row: token, position [B] -> (next tokens [B], logprobs [B], cache)."""
  ones = jnp.ones_like(token)[:, None]
  logits, cache = _forward(graphdef, state, token[:, None], position[:, None], ones, cache)
  return (*_pick(logits, rng, temperature, top_p, **kw), cache)


_step = functools.partial(jax.jit, static_argnames=_SAMPLING, donate_argnames=("cache",))
prefill_step, decode_step = _step(_prefill), _step(_decode)


@functools.partial(jax.jit, static_argnames=_SAMPLING + ("num_steps",), donate_argnames=("cache",))
def generate_loop(
  state,
  tokens,
  positions,
  segments,
  cache,
  rng,
  temperature,
  top_p,
  stop_ids,
  pad_id,
  *,
  graphdef,
  num_steps,
  **kw,
):
  """Prefill + up to num_steps - 1 decode steps (kw: greedy, top_k, use_top_p).

  Returns (tokens [B, num_steps], logprobs [B, num_steps], steps run, cache). A row stops after
  it emits one of `stop_ids` [S]; later slots hold pad_id and logprob 0.
  """
  b = tokens.shape[0]
  args, kw = (temperature, top_p), dict(kw, graphdef=graphdef)
  rng, sub = jax.random.split(rng)
  tok, lp, cache = _prefill(state, tokens, positions, segments, cache, sub, *args, **kw)
  out_tok = jnp.full((b, num_steps), pad_id, jnp.int32).at[:, 0].set(tok)
  out_lp = jnp.zeros((b, num_steps), jnp.float32).at[:, 0].set(lp)
  done = jnp.isin(tok, stop_ids)
  next_pos = positions[:, -1] + 1

  def cond(carry):
    i, _, _, _, done, _, _ = carry
    return (i < num_steps) & ~jnp.all(done)

  def body(carry):
    i, tok, out_tok, out_lp, done, cache, rng = carry
    rng, sub = jax.random.split(rng)
    new, lp, cache = _decode(state, tok, next_pos + i - 1, cache, sub, *args, **kw)
    new = jnp.where(done, pad_id, new)
    lp = jnp.where(done, 0.0, lp)
    out_tok = jax.lax.dynamic_update_slice(out_tok, new[:, None], (0, i))
    out_lp = jax.lax.dynamic_update_slice(out_lp, lp[:, None], (0, i))
    return i + 1, new, out_tok, out_lp, done | jnp.isin(new, stop_ids), cache, rng

  carry = (jnp.int32(1), tok, out_tok, out_lp, done, cache, rng)
  steps, _, out_tok, out_lp, _, cache, _ = jax.lax.while_loop(cond, body, carry)
  return out_tok, out_lp, steps, cache

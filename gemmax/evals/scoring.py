"""Log-likelihood of continuations given prefixes, batched: one forward per padded batch."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm


def _round(n: int, m: int) -> int:
  return max(m, -(-n // m) * m)


@nnx.jit
def _score(model, ids, segments, index, targets, mask):
  """ids, segments [B, T]; index, targets, mask [B, L] -> per-token logprobs [B, L] (masked 0).

  Only the hidden states that predict a target reach the output projection, so a large vocab
  costs [B, L, V], not [B, T, V].
  """
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
  h = model.hidden_states(ids, positions=positions, segment_ids=segments)
  h = jnp.take_along_axis(h, index[..., None], axis=1)
  logp = jax.nn.log_softmax(model.logits(h), axis=-1)
  tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.where(mask, tok, 0.0)


def continuation_logprobs(model, prefixes: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], *, batch_size: int = 8,
                          max_len: int | None = None, pad_id: int = 0, progress: bool = True,
                          desc: str = "scoring") -> list[np.ndarray]:
  """For each pair, the f32 logprobs [len(continuation)] of the continuation tokens given the
  prefix. Sequences are right-padded; padding gets segment id 0 so real tokens never see it.
  """
  if len(prefixes) != len(continuations):
    raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
  limit = max_len or model.config.max_position_embeddings
  out = []
  for start in tqdm(range(0, len(prefixes), batch_size), desc=desc, disable=not progress,
                    leave=False):
    pre, cont = prefixes[start:start + batch_size], continuations[start:start + batch_size]
    for i, (p, c) in enumerate(zip(pre, cont)):
      if not p or not c:
        raise ValueError(f"row {start + i}: prefix and continuation must both be non-empty")
      if len(p) + len(c) > limit:
        raise ValueError(f"row {start + i}: {len(p) + len(c)} tokens exceed max_len {limit}")
    t = _round(max(len(p) + len(c) for p, c in zip(pre, cont)), 32)
    lmax = _round(max(len(c) for c in cont), 8)
    ids = np.full((batch_size, t), pad_id, np.int32)
    seg = np.zeros((batch_size, t), np.int32)
    index = np.zeros((batch_size, lmax), np.int32)
    targets = np.zeros((batch_size, lmax), np.int32)
    mask = np.zeros((batch_size, lmax), bool)
    for i, (p, c) in enumerate(zip(pre, cont)):
      n = len(p) + len(c)
      ids[i, :n], seg[i, :n] = list(p) + list(c), 1
      index[i, :len(c)] = np.arange(len(p) - 1, n - 1)  # the state before each target token
      targets[i, :len(c)], mask[i, :len(c)] = c, True
    lp = np.asarray(_score(model, ids, seg, index, targets, mask))
    out.extend(lp[i, :len(c)] for i, c in enumerate(cont))
  return out


def _tile(cache, copies: int):
  """Every row of a KV cache repeated `copies` times (row r -> rows r*copies ... )."""
  return jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0) if x.ndim else x, cache)


@nnx.jit
def _score_choices(model, ids, positions, segments, choices):
  """Left-padded prompts ids [B, T] and choices [C, L] -> logprobs [B, C, L] of each choice's
  tokens after each prompt. The prompt runs once into a KV cache that is then copied per choice:
  scoring C choices costs one prompt plus C * (L - 1) tokens, not C whole sequences."""
  from gemmax.models.kv_cache import init_cache
  b, t = ids.shape
  c, l = choices.shape
  cache = init_cache(model.config, b, t + l)
  h, cache = model.hidden_states(ids, positions, segments, cache)
  first = jax.nn.log_softmax(model.logits(h[:, -1]), axis=-1)  # [B, V]
  out = [first[:, choices[:, 0]][..., None]]  # [B, C, 1]
  if l > 1:
    toks = jnp.tile(choices[:, :-1], (b, 1))  # row i * C + j: choice j after prompt i
    pos = jnp.repeat(positions[:, -1:], c, axis=0) + 1 + jnp.arange(l - 1, dtype=jnp.int32)
    h, _ = model.hidden_states(toks, pos, jnp.ones_like(toks), _tile(cache, c))
    logp = jax.nn.log_softmax(model.logits(h), axis=-1)
    rest = jnp.take_along_axis(logp, jnp.tile(choices[:, 1:], (b, 1))[..., None], axis=-1)
    out.append(rest[..., 0].reshape(b, c, l - 1))
  return jnp.concatenate(out, axis=-1)


def choice_logprobs(model, prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[int]], *,
                    batch_size: int = 8, pad_id: int = 0, progress: bool = True,
                    desc: str = "scoring") -> list[list[np.ndarray]]:
  """out[i][j]: the f32 logprobs of the tokens of choice j after prompt i (every prompt takes
  the same choices: classification labels). Equal to `continuation_logprobs` on each pair."""
  if not choices or any(not c for c in choices) or any(not p for p in prompts):
    raise ValueError("choice_logprobs: prompts and choices must be non-empty")
  if batch_size < 1:
    raise ValueError(f"choice_logprobs: batch_size must be >= 1, got {batch_size}")
  lmax = _round(max(len(c) for c in choices), 1)
  table = np.zeros((len(choices), lmax), np.int32)
  for j, c in enumerate(choices):
    table[j, :len(c)] = c
  limit = model.config.max_position_embeddings
  out = []
  for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress,
                    leave=False):
    rows = prompts[start:start + batch_size]
    for i, p in enumerate(rows):
      if len(p) + lmax > limit:
        raise ValueError(f"row {start + i}: {len(p) + lmax} tokens exceed max_len {limit}")
    t = _round(max(len(p) for p in rows), 32)
    ids = np.full((batch_size, t), pad_id, np.int32)
    seg = np.zeros((batch_size, t), np.int32)
    pos = np.zeros((batch_size, t), np.int32)
    for i, p in enumerate(rows):  # left padding: every prompt ends in the last column
      ids[i, t - len(p):], seg[i, t - len(p):], pos[i, t - len(p):] = p, 1, np.arange(len(p))
    lp = np.asarray(_score_choices(model, ids, pos, seg, table))
    out.extend([lp[i, j, :len(c)] for j, c in enumerate(choices)] for i in range(len(rows)))
  return out

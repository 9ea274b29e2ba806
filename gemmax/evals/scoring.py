"""Log-likelihood of continuations given prefixes, batched: one forward per padded batch."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from gemmax.errors import GemmaxError


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


def continuation_logprobs(
  model,
  prefixes: Sequence[Sequence[int]],
  continuations: Sequence[Sequence[int]],
  *,
  batch_size: int = 8,
  max_len: int | None = None,
  pad_id: int = 0,
  progress: bool = True,
  desc: str = "scoring",
) -> list[np.ndarray]:
  """For each pair, the f32 logprobs [len(continuation)] of the continuation tokens given the
  prefix. Sequences are right-padded; padding gets segment id 0 so real tokens never see it.
  """
  if len(prefixes) != len(continuations):
    raise GemmaxError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise GemmaxError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  context = model.config.max_position_embeddings
  if max_len is not None and not 1 <= max_len <= context:
    raise GemmaxError(
      f"max_len {max_len} must be in [1, the model's max_position_embeddings {context}]"
    )
  limit = max_len or context
  out = []
  for start in tqdm(
    range(0, len(prefixes), batch_size), desc=desc, disable=not progress, leave=False
  ):
    pre, cont = prefixes[start : start + batch_size], continuations[start : start + batch_size]
    for i, (p, c) in enumerate(zip(pre, cont)):
      if not p or not c:
        raise GemmaxError(f"row {start + i}: prefix and continuation must both be non-empty")
      if len(p) + len(c) > limit:
        raise GemmaxError(f"row {start + i}: {len(p) + len(c)} tokens exceed max_len {limit}")
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
      index[i, : len(c)] = np.arange(len(p) - 1, n - 1)  # the state before each target token
      targets[i, : len(c)], mask[i, : len(c)] = c, True
    lp = np.asarray(_score(model, ids, seg, index, targets, mask))
    out.extend(lp[i, : len(c)] for i, c in enumerate(cont))
  return out

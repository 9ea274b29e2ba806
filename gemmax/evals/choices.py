"""Many prompts, one set of choices (classification labels): score every choice after every
prompt, and answer every prompt greedily, from one pass over the prompts.

A classification prompt is mostly a shared instruction, so the prefix all prompts share runs once
and its KV cache is copied per prompt; each prompt's own rest runs once; each choice then costs
only its tokens after a copy of the prompt's cache, and a greedy answer continues from the same
cache. For 538 TREC questions of ~72 tokens (55 shared) and six labels, that is ~17 tokens per
prompt instead of 6 x 74.

The choices run as one block padded to the longest. A block per choice length would put another
copy of every layer into the compiled pass: on SmolLM2-135M (bf16, 8 answer tokens) TREC's labels,
of lengths 4 and 2, compile in 9.4-9.9 s instead of 12.4-12.8, six lengths in 9.7 s instead of
20.0, while scoring 256 questions took the same time (23.1 against 22.8 s).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from gemmax.errors import GemmaxError


def _tile(cache, copies: int):
  """Every row of a KV cache repeated `copies` times (row r -> rows r*copies ... )."""
  return jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0) if x.ndim else x, cache)


def _log_softmax(model, h):
  return jax.nn.log_softmax(model.logits(h), axis=-1)


@nnx.jit(static_argnames=("answer_steps",))
def _prompt_pass(model, prefix, ids, positions, segments, choices, stop, answer_steps=0):
  """prefix [1, P] (P may be 0); each prompt's rest left-padded in ids [B, T]; choices [C, L]
  (padded at the end) -> (logprobs [B, C, L] of each choice token after its prompt, greedy
  answers [B, S]). Answering stops early once every row has produced one of `stop` [K] (later
  tokens are 0)."""
  from gemmax.models.kv_cache import init_cache

  b, t = ids.shape
  p = prefix.shape[1]
  c, l = choices.shape
  # Whole-context buffers on every layer: a ring of `window` slots would let the left padding of
  # the rests push prefix keys that local layers still need out of the ring (the window itself is
  # applied by the attention mask, from positions).
  flat = model.config.replace(sliding_window=None)
  if p:
    cache = init_cache(flat, 1, p + t + max(l, answer_steps))
    pre_pos = jnp.arange(p, dtype=jnp.int32)[None]
    _, cache = model.hidden_states(prefix, pre_pos, jnp.ones_like(prefix), cache)
    cache = _tile(cache, b)
  else:
    cache = init_cache(flat, b, t + max(l, answer_steps))
  h, cache = model.hidden_states(ids, positions, segments, cache)
  first = _log_softmax(model, h[:, -1])  # [B, V]
  last = positions[:, -1]
  scores = first[:, choices[:, 0]][..., None]  # [B, C, 1]
  if l > 1:
    toks = jnp.tile(choices[:, :-1], (b, 1))  # row i * C + j: choice j after prompt i
    pos = jnp.repeat(last[:, None], c, axis=0) + 1 + jnp.arange(l - 1, dtype=jnp.int32)
    hc, _ = model.hidden_states(toks, pos, jnp.ones_like(toks), _tile(cache, c))
    rest = jnp.take_along_axis(
      _log_softmax(model, hc), jnp.tile(choices[:, 1:], (b, 1))[..., None], axis=-1
    )
    scores = jnp.concatenate([scores, rest[..., 0].reshape(b, c, l - 1)], axis=-1)
  answers = jnp.zeros((b, answer_steps), jnp.int32)
  if answer_steps:

    def more(carry):
      i, _, _, done = carry
      return (i < answer_steps) & ~jnp.all(done)

    def step(carry):  # feeds token i - 1, writes token i
      i, cache, answers, done = carry
      prev = jax.lax.dynamic_slice_in_dim(answers, i - 1, 1, axis=1)
      h, cache = model.hidden_states(prev, (last + i)[:, None], jnp.ones((b, 1), jnp.int32), cache)
      tok = jnp.argmax(model.logits(h[:, -1]), -1).astype(jnp.int32)
      return i + 1, cache, answers.at[:, i].set(tok), done | jnp.isin(tok, stop)

    tok = jnp.argmax(first, -1).astype(jnp.int32)
    carry = (1, cache, answers.at[:, 0].set(tok), jnp.isin(tok, stop))
    answers = jax.lax.while_loop(more, step, carry)[2]
  return scores, answers


def shared_prefix(prompts: Sequence[Sequence[int]], minimum: int = 16) -> int:
  """Tokens every prompt starts with (each keeps at least one of its own); 0 below `minimum`."""
  first = list(prompts[0])
  n = min(len(p) for p in prompts) - 1
  for p in prompts[1:]:
    n = min(n, next((i for i, (a, b) in enumerate(zip(first[:n], p)) if a != b), n))
  return n if n >= minimum else 0


def score_and_answer(
  model,
  prompts: Sequence[Sequence[int]],
  choices: Sequence[Sequence[int]],
  *,
  answer_steps: int = 0,
  stop: Sequence[int] = (),
  batch_size: int = 16,
  pad_id: int = 0,
  progress: bool = True,
  desc: str = "scoring",
):
  """(logprobs, answers): logprobs[i][j] the f32 logprobs of choice j's tokens after prompt i
  (equal to `continuation_logprobs` on each pair); answers[i] up to `answer_steps` greedy tokens
  after prompt i, through the first of `stop` ([] when answer_steps is 0).

  Every batch has one shape (the longest prompt rest, in steps of 16): XLA compiles the pass
  once, which costs more than the padding it adds."""
  if not choices or any(not c for c in choices) or not prompts or any(not p for p in prompts):
    raise GemmaxError("score_and_answer: prompts and choices must be non-empty")
  if batch_size < 1:
    raise GemmaxError(f"score_and_answer: batch_size must be >= 1, got {batch_size}")
  width = max(len(c) for c in choices)
  # The end of a short choice repeats its last token: causal attention keeps the padding out of
  # the choice's own logprobs, which are all that is read back.
  block = np.asarray([list(c) + [c[-1]] * (width - len(c)) for c in choices], np.int32)
  p = shared_prefix(prompts)
  prefix = np.asarray([list(prompts[0][:p])], np.int32).reshape(1, p)
  longest = max(width, answer_steps)  # tokens after a prompt
  limit = model.config.max_position_embeddings
  t = -(-max(len(q) - p for q in prompts) // 16) * 16
  stop_ids = np.asarray(list(stop) or [-1], np.int32)
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches finish together
  scores, answers = [None] * len(prompts), [None] * len(prompts)
  for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
    index = order[start : start + batch_size]
    rows = [list(prompts[i][p:]) for i in index]
    for i, q in zip(index, rows):
      if p + len(q) + longest > limit:
        raise GemmaxError(f"row {i}: {p + len(q) + longest} tokens exceed max_len {limit}")
    ids = np.full((batch_size, t), pad_id, np.int32)
    seg = np.zeros((batch_size, t), np.int32)
    pos = np.zeros((batch_size, t), np.int32)
    for r, q in enumerate(rows):  # left padding: every prompt ends in the last column
      ids[r, t - len(q) :], seg[r, t - len(q) :] = q, 1
      pos[r, t - len(q) :] = p + np.arange(len(q))
    got, ans = _prompt_pass(
      model, prefix, ids, pos, seg, block, stop_ids, answer_steps=answer_steps
    )
    got, ans = np.asarray(got), np.asarray(ans)
    for r, i in enumerate(index):
      row = [got[r, j, : len(c)] for j, c in enumerate(choices)]
      a = ans[r].tolist()
      end = next((k + 1 for k, tok in enumerate(a) if tok in stop), len(a))
      scores[i], answers[i] = row, a[:end]
  return scores, answers


def choice_logprobs(model, prompts, choices, **kw) -> list[list[np.ndarray]]:
  """logprobs[i][j]: the f32 logprobs of the tokens of choice j after prompt i."""
  return score_and_answer(model, prompts, choices, **kw)[0]

"""GRPO rollouts: each step samples G completions for P prompts from the policy as it is at that
step, scores them, and yields the batch gemmax.train.grpo_loss_fn trains on.

    rollouts = GRPORollouts(read_prompt_rows(tok, "train.jsonl", "alpaca", "model"), tok, rewards,
                            num_generations=8, prompts_per_step=4, max_completion_length=8)
    trainer = Trainer(model, ..., train_data=rollouts, loss_fn=grpo_loss_fn(GRPOConfig(...)))
    rollouts.bind(trainer)   # samples come from the trainer's current parameters

A prompt is a row rendered as training renders it (gemmax.data.tokenize_example: the Alpaca prompt
or a chat template, the model's own included): the ids before its last answer span; the row's
answer (Alpaca `output`, or a chat row's final assistant message) is `row["output"]` for the reward
functions. Sampling (gemmax.sampling.Sampler: temperature, top-p/top-k) stops at EOS and at the
token that closes a trained answer (end of turn), or after max_completion_length tokens.

Batch [P*G, T], a prompt's G completions adjacent: input_ids/targets the prompt + completion
shifted by one, loss_mask 1 on the completion's tokens (the closing token included when it was
generated), positions, segment_ids (1 on real tokens), advantages [P*G] (gemmax.train.
group_advantages of the weighted reward totals). T = the longest prompt + max_completion_length
- 1, rounded up to a multiple of 16 (one compiled step for the run).

Prompts are drawn in a permutation per epoch; the permutation and the sampling key derive from
(seed, step), so a run resumed from get_state() replays exactly. metrics() returns the means over
the steps since its last call (the Trainer logs them): reward (weighted total) and reward_std,
reward_<fn> and reward_<fn>_std per function, completion_length (tokens), sampling_tokens_per_sec
(generated tokens per second of sampling) and train_tokens_per_sec (batch tokens per second spent
outside sampling, i.e. in the train step; lags one step).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
from flax import nnx

from gemmax.data.formats import example_rows, tokenize_example
from gemmax.errors import ConfigError, GemmaxError
from gemmax.train.grpo import group_advantages

_ROUND = 16


@dataclasses.dataclass(frozen=True)
class PromptRow:
  """One prompt: its token ids, its text, the token that closes an answer, the row (with
  `output`, the reference answer) given to the reward functions."""

  ids: tuple
  text: str
  stop_id: int
  row: dict


def prompt_row(tokenizer, record: dict, kind: str, template=None, where: str = "") -> PromptRow:
  """The prompt of an Alpaca or chat record (the ids before its last answer span)."""
  ids, mask = tokenize_example(tokenizer, record, kind, template)
  target = np.flatnonzero(mask)
  if not len(target):
    raise GemmaxError(f"{where}: no answer tokens")
  last = target[-1]
  start = last
  while start > 0 and mask[start - 1]:
    start -= 1
  prompt = [int(i) for i in ids[:start]]
  if not prompt:
    raise GemmaxError(f"{where}: empty prompt")
  row = dict(record)
  if kind == "chat":
    row["output"] = str(record["messages"][-1]["content"]).strip()
  return PromptRow(tuple(prompt), tokenizer.decode(prompt), int(ids[last]), row)


def read_prompt_rows(tokenizer, path: str, kind: str = "alpaca", template=None, limit: int = 0):
  """[PromptRow] of a JSONL/CSV/Parquet file of Alpaca rows (output = the reference answer) or
  chat rows ending with the assistant's reference answer; a bad row fails naming file and row."""
  from gemmax.data import SourceSpec
  from gemmax.data.sources import load_numbered

  if kind not in ("alpaca", "chat"):
    raise ConfigError(f"prompt rows must be alpaca or chat, got {kind!r}")
  rows, _ = load_numbered(SourceSpec(path, kind=kind, template=template), "fail", tokenizer)
  out = []
  for file, n, record in rows[:limit] if limit else rows:
    if kind == "chat" and record["messages"][-1].get("role") != "assistant":
      raise GemmaxError(f"{file} row {n}: the last message must be the assistant's reference")
    if kind == "alpaca":
      record = {**record, "output": str(record["output"]).strip()}
    out.append(prompt_row(tokenizer, record, kind, template, where=f"{file} row {n}"))
  return out


def _mean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(x[~np.isnan(x)].mean()) if (~np.isnan(x)).any() else float("nan")


def _std(x) -> float:
  """Sample standard deviation of the non-NaN values (0 for fewer than two)."""
  x = np.asarray(x, np.float64)
  x = x[~np.isnan(x)]
  return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _short(spec: str) -> str:
  return spec.rpartition(":")[2] or spec


class GRPORollouts:
  """Iterator of GRPO training batches sampled from a bound Trainer's current policy."""

  def __init__(
    self,
    prompts: Sequence[PromptRow],
    tokenizer,
    rewards,
    *,
    num_generations: int,
    prompts_per_step: int,
    max_completion_length: int,
    temperature: float = 1.0,
    top_p=None,
    top_k=None,
    scale_rewards: str = "group",
    seed: int = 0,
    max_positions: int | None = None,
  ):
    """rewards: a gemmax.evals.rewards.Rewards. max_positions: the model's context, checked
    against the longest prompt + max_completion_length."""
    if not prompts:
      raise ConfigError("GRPO needs at least one prompt")
    if num_generations < 2:
      raise ConfigError(
        f"num_generations {num_generations}: a group of one has advantage 0 (nothing to learn); "
        "use >= 2"
      )
    if prompts_per_step < 1 or max_completion_length < 1:
      raise ConfigError("prompts_per_step and max_completion_length must be >= 1")
    if prompts_per_step > len(prompts):
      raise ConfigError(f"prompts_per_step {prompts_per_step} > the {len(prompts)} prompts")
    self.prompts, self.tokenizer, self.rewards = list(prompts), tokenizer, rewards
    self.G, self.P, self.max_new = num_generations, prompts_per_step, max_completion_length
    self.sample_kw = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    self.scale, self.seed = scale_rewards, seed
    longest = max(len(p.ids) for p in self.prompts)
    self.seq_len = -(-(longest + max_completion_length - 1) // _ROUND) * _ROUND
    if max_positions is not None and longest + max_completion_length > max_positions:
      raise ConfigError(
        f"the longest prompt ({longest} tokens) + max_completion_length {max_completion_length} "
        f"exceeds the model's max_position_embeddings {max_positions}"
      )
    self.names = [_short(n) for n in rewards.names]
    if len(set(self.names)) < len(self.names):
      self.names = [f"{i}_{n}" for i, n in enumerate(self.names)]
    self.step = 0
    self._policy = None
    self._sums: dict = {}
    self._steps = 0
    self._out_since = None  # when the last batch was handed out
    self._last_tokens = 0

  # --- binding and state -----------------------------------------------------------------------
  def bind(self, policy):
    """`policy`: a gemmax Trainer (samples from its current parameters), a Transformer, or a
    callable returning the current one."""
    if hasattr(policy, "split") and hasattr(policy, "params"):
      trainer = policy

      def current():
        import jax

        jax.block_until_ready(trainer.params)  # the step in flight counts as training time
        return nnx.merge(trainer.split.eval_def, trainer.params, trainer.rest)

      self._policy = current
    elif callable(policy) and not isinstance(policy, nnx.Module):
      self._policy = policy
    else:
      self._policy = lambda: policy
    return self

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])

  # --- prompts of a step -----------------------------------------------------------------------
  def prompt_indices(self, step: int) -> list[int]:
    """The P prompt indices of `step`: consecutive slots of per-epoch permutations."""
    n, out = len(self.prompts), []
    for slot in range(step * self.P, (step + 1) * self.P):
      epoch, i = divmod(slot, n)
      out.append(int(np.random.default_rng([self.seed, 1, epoch]).permutation(n)[i]))
    return out

  # --- iteration -------------------------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._policy is None:
      raise RuntimeError("GRPORollouts: call bind(trainer or model) before iterating")
    from gemmax.sampling import Sampler

    model = self._policy()
    t0 = time.perf_counter()
    if self._out_since is not None:  # the time since the last batch went to training it
      self._add(train_seconds=t0 - self._out_since, train_tokens=self._last_tokens)
    chosen = [self.prompts[i] for i in self.prompt_indices(self.step)]
    group = [p for p in chosen for _ in range(self.G)]
    seed = int(np.random.default_rng([self.seed, 2, self.step]).integers(2**31))
    result = Sampler(model, self.tokenizer).generate(
      [list(p.ids) for p in group],
      self.max_new,
      stop=sorted({p.stop_id for p in chosen}),
      seed=seed,
      **self.sample_kw,
    )
    sampled = time.perf_counter()
    table, total = self.rewards([p.text for p in group], result.text, [p.row for p in group])
    adv = np.asarray(group_advantages(total, self.G, scale=self.scale), np.float32)
    batch = self._batch(group, result.tokens, adv)
    lengths = np.array([len(t) for t in result.tokens], np.float32)
    self._add(
      reward=float(total.mean()),
      reward_std=_std(total),
      completion_length=float(lengths.mean()),
      sampling_seconds=sampled - t0,
      sampled_tokens=float(lengths.sum()),
      **{f"reward_{n}": _mean(table[:, j]) for j, n in enumerate(self.names)},
      **{f"reward_{n}_std": _std(table[:, j]) for j, n in enumerate(self.names)},
    )
    self._steps += 1
    self.step += 1
    self._last_tokens = int(batch["input_ids"].size)
    self._out_since = time.perf_counter()
    return batch

  def _batch(self, group, completions, advantages) -> dict:
    t = self.seq_len
    seqs = []
    for p, gen in zip(group, completions):
      ids = list(p.ids) + [int(g) for g in gen]
      mask = [0] * len(p.ids) + [1] * len(gen)  # every generated token is a target
      seqs.append((np.asarray(ids[: t + 1], np.int32), np.asarray(mask[: t + 1], np.int32)))
    return dict(example_rows(seqs, t), advantages=np.asarray(advantages, np.float32))

  # --- metrics ---------------------------------------------------------------------------------
  def _add(self, **values):
    for k, v in values.items():
      self._sums[k] = self._sums.get(k, 0.0) + v

  def metrics(self) -> dict:
    """Means over the steps since the last call (see the module docstring); resets them."""
    s, k = self._sums, max(self._steps, 1)
    if not self._steps:
      return {}
    out = {
      name: value / k
      for name, value in s.items()
      if name not in ("sampling_seconds", "sampled_tokens", "train_seconds", "train_tokens")
    }
    out["sampling_tokens_per_sec"] = s["sampled_tokens"] / max(s["sampling_seconds"], 1e-9)
    if s.get("train_seconds"):
      out["train_tokens_per_sec"] = s["train_tokens"] / s["train_seconds"]
    self._sums, self._steps = {}, 0
    return out

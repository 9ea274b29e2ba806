"""Best-of-n sampling: n completions per prompt from gemmax's sampler, scored by reward functions;
the best of each prompt (optionally only above a threshold) is kept. Llama 2's rejection-sampling
fine-tuning trains on these with the ordinary SFT trainer (`as_alpaca` makes them its rows).
"""

from __future__ import annotations

import numpy as np

from gemmax.errors import ConfigError
from gemmax.evals.rewards import Rewards


def best_of_n(
  sampler,
  prompts,
  rows,
  rewards: Rewards,
  *,
  n: int,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_p=None,
  top_k=None,
  stop=None,
  min_reward: float | None = None,
  batch_prompts: int = 4,
  seed: int = 0,
  progress: bool = False,
) -> tuple[list[dict], dict]:
  """(kept, stats). `prompts[i]` (text or ids) is the rendered prompt of `rows[i]` (the dict the
  reward functions see). Each prompt is sampled n times, `batch_prompts` prompts per sampler call.
  kept: one dict per prompt whose best total reward is >= min_reward (all when None): `index`,
  `row`, `prompt`, `completion`, `reward`, `rewards` (per function), `finish`. stats: sample
  count, mean and std of every sample's total, mean of the best, kept fraction, per-function
  means (NaN-aware), and the fraction of prompts whose n samples were all equally rewarded."""
  if n < 1 or batch_prompts < 1:
    raise ConfigError(f"best_of_n: n and batch_prompts must be >= 1, got {n}, {batch_prompts}")
  if n > 1 and not temperature > 0:
    raise ConfigError("best_of_n: n > 1 needs temperature > 0 (greedy samples are all the same)")
  if len(prompts) != len(rows):
    raise ConfigError(f"best_of_n: {len(prompts)} prompts but {len(rows)} rows")
  from tqdm.auto import tqdm

  texts = [p if isinstance(p, str) else sampler.tokenizer.decode(list(p)) for p in prompts]
  totals, tables, kept, flat = [], [], [], []
  for start in tqdm(
    range(0, len(prompts), batch_prompts), desc="best-of-n", unit="batch", disable=not progress
  ):
    idx = list(range(start, min(start + batch_prompts, len(prompts))))
    batch = [prompts[i] for i in idx for _ in range(n)]
    out = sampler.generate(
      batch,
      max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      stop=stop,
      seed=seed + start,
    )
    table, total = rewards(
      [texts[i] for i in idx for _ in range(n)],
      out.text,
      [rows[i] for i in idx for _ in range(n)],
    )
    tables.append(table)
    flat.extend(total.tolist())
    for k, i in enumerate(idx):
      group = total[k * n : (k + 1) * n]
      best = k * n + int(np.argmax(group))
      totals.append((float(group.max()), bool(np.all(group == group[0]))))
      if min_reward is None or total[best] >= min_reward:
        kept.append(
          {
            "index": i,
            "row": rows[i],
            "prompt": texts[i],
            "completion": out.text[best],
            "reward": float(total[best]),
            "rewards": dict(zip(rewards.names, map(float, table[best]))),
            "finish": out.finish[best],
          }
        )
  table = np.concatenate(tables)
  stats = {
    "prompts": len(prompts),
    "samples": len(flat),
    "reward_mean": float(np.mean(flat)),
    "reward_std": float(np.std(flat)),
    "best_mean": float(np.mean([b for b, _ in totals])),
    "kept": len(kept),
    "kept_fraction": len(kept) / len(prompts),
    "flat_groups": float(np.mean([f for _, f in totals])),
    "per_function": {
      name: float(np.nanmean(table[:, j])) if np.isfinite(table[:, j]).any() else None
      for j, name in enumerate(rewards.names)
    },
  }
  return kept, stats


def as_alpaca(kept: list[dict]) -> list[dict]:
  """SFT rows of the kept completions: the source row's instruction and input, the completion as
  its output (Alpaca records, which finetune.py and gemmax.data read)."""
  return [
    {
      "instruction": k["row"].get("instruction", k["prompt"]),
      "input": k["row"].get("input", ""),
      "output": k["completion"],
    }
    for k in kept
  ]

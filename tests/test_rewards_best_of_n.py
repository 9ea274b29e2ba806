"""Reward functions named in configs, and best-of-n selection (rejection sampling): the best
completion of each prompt by weighted reward, a threshold, the SFT rows it becomes; and the same
through gemmax's real sampler on a tiny model."""

import types

import numpy as np
import pytest

from gemmax.errors import ConfigError, GemmaxError
from gemmax.evals.best_of_n import as_alpaca, best_of_n
from gemmax.evals.rewards import load_rewards


def count_a(prompt, completion, row):  # a reward for the tests, imported by name below
  return float(completion.count("a"))


def unscorable(prompt, completion, row):
  return None if completion.startswith("?") else 1.0


def says_text(prompt, completion, row):
  return "ten"


ME = __name__


def test_load_and_weighted_totals():
  r = load_rewards(f"{ME}:count_a, gemmax.evals.rewards:exact_match", [0.5, 2.0])
  table, total = r(["p", "p"], ["banana", "yes"], [{"output": "Yes!"}, {"output": "yes"}])
  np.testing.assert_allclose(table, [[3.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(total, [1.5, 2.0])
  r = load_rewards([f"{ME}:unscorable", "gemmax.evals.rewards:first_word_match"])
  table, total = r(["p", "p"], ["?", "human, because"], [{"output": "human"}] * 2)
  assert np.isnan(table[0, 0]) and total[0] == 0.0 and total[1] == 2.0


@pytest.mark.parametrize(
  "specs,weights,needle",
  [
    ("count_a", None, "must be 'module:function'"),
    ("no_such_module_xyz:f", None, "cannot import no_such_module_xyz"),
    (f"{ME}:missing", None, f"{ME} has no function missing"),
    (f"{ME}:count_a", [1.0, 2.0], "1 reward functions but 2 weights"),
    (f"{ME}:count_a", [float("nan")], "weights must be finite"),
    ("", None, "no reward function given"),
  ],
)
def test_bad_reward_configs(specs, weights, needle):
  with pytest.raises(ConfigError, match=needle):
    load_rewards(specs, weights)


def test_a_reward_that_returns_no_number_is_named():
  with pytest.raises(GemmaxError, match="reward .*says_text returned str for completion 0"):
    load_rewards(f"{ME}:says_text")(["p"], ["c"], [{}])


class ScriptedSampler:
  """Returns the given completions in order: best-of-n's selection checked exactly."""

  def __init__(self, texts):
    self.texts, self.calls = list(texts), []
    self.tokenizer = None

  def generate(self, prompts, max_new_tokens, **kw):
    self.calls.append((list(prompts), kw["seed"]))
    out, self.texts = self.texts[: len(prompts)], self.texts[len(prompts) :]
    return types.SimpleNamespace(text=out, finish=["stop"] * len(out))


def test_best_of_n_keeps_each_prompts_best():
  texts = ["x", "aa", "a", "b", "b", "b", "aaa", "", "a"]  # 3 prompts x n=3
  rows = [{"instruction": f"q{i}", "input": "", "output": "-"} for i in range(3)]
  sampler = ScriptedSampler(texts)
  rewards = load_rewards(f"{ME}:count_a")
  kept, stats = best_of_n(
    sampler, ["P0", "P1", "P2"], rows, rewards, n=3, max_new_tokens=4, batch_prompts=2
  )
  assert [k["completion"] for k in kept] == ["aa", "b", "aaa"]
  assert [k["reward"] for k in kept] == [2.0, 0.0, 3.0]
  assert [c[0] for c in sampler.calls] == [["P0"] * 3 + ["P1"] * 3, ["P2"] * 3]
  assert stats["samples"] == 9 and stats["best_mean"] == pytest.approx(5 / 3)
  assert stats["flat_groups"] == pytest.approx(1 / 3)  # P1's three samples tie
  assert as_alpaca(kept)[2] == {"instruction": "q2", "input": "", "output": "aaa"}
  kept, stats = best_of_n(
    ScriptedSampler(texts), ["P0", "P1", "P2"], rows, rewards, n=3, max_new_tokens=4, min_reward=1
  )
  assert [k["index"] for k in kept] == [0, 2] and stats["kept_fraction"] == pytest.approx(2 / 3)
  with pytest.raises(ConfigError, match="n > 1 needs temperature > 0"):
    best_of_n(sampler, ["P"], rows[:1], rewards, n=2, max_new_tokens=2, temperature=0.0)


def test_best_of_n_with_the_real_sampler(tmp_path):
  from flax import nnx

  from finetune_assets import write_tokenizer
  from gemmax.data import load_tokenizer
  from gemmax.models import ModelConfig, Transformer
  from gemmax.sampling import Sampler

  write_tokenizer(str(tmp_path), ["a banana and a cat ate a pear"] * 20)
  tok = load_tokenizer(str(tmp_path))
  model = Transformer(ModelConfig.preset("gemma2-tiny", vocab_size=512), rngs=nnx.Rngs(0))
  rows = [{"instruction": "say a", "input": "", "output": "a"}] * 2
  kept, stats = best_of_n(
    Sampler(model, tok),
    ["a cat", "a pear"],
    rows,
    load_rewards(f"{ME}:count_a"),
    n=4,
    max_new_tokens=6,
    temperature=1.0,
  )
  assert len(kept) == 2 and stats["samples"] == 8
  for k in kept:
    assert k["reward"] == count_a(None, k["completion"], None)
  assert stats["best_mean"] >= stats["reward_mean"]

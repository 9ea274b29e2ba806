"""gemmax.posttrain.GRPORollouts: the batch layout (a prompt's G completions adjacent, prompt
tokens unscored, every generated token scored), the group advantages of the rewards, per-step
metrics, and determinism: the same (seed, step) gives the same batch, and a resumed iterator
(get_state / set_state) replays the original."""

import numpy as np
import pytest

from finetune_assets import ROWS, make_assets
from gemmax.errors import ConfigError
from gemmax.evals.rewards import Rewards
from gemmax.train import group_advantages

P, G, MAX_NEW = 2, 3, 5


def _length(prompt, completion, row):
  return float(len(completion))


def _has_e(prompt, completion, row):
  return None if not completion else float("e" in completion)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from gemmax.convert import load
  from gemmax.data import load_tokenizer
  from gemmax.posttrain import read_prompt_rows

  d = make_assets(str(tmp_path_factory.mktemp("rollouts")))
  model = load(f"{d}/model", compute_dtype="float32")
  tok = load_tokenizer(f"{d}/model")
  prompts = read_prompt_rows(tok, f"{d}/train.jsonl", "alpaca", None, limit=len(ROWS))
  rewards = Rewards(("t:length", "t:has_e"), (_length, _has_e), (1.0, 0.5))
  return model, tok, prompts, rewards


def _rollouts(setup, seed=0, **kw):
  from gemmax.posttrain import GRPORollouts

  model, tok, prompts, rewards = setup
  kw = dict(num_generations=G, prompts_per_step=P, max_completion_length=MAX_NEW, **kw)
  return GRPORollouts(prompts, tok, rewards, seed=seed, **kw).bind(model)


def test_prompts_are_the_rows_rendered_as_training_renders_them(setup):
  from gemmax.evals.answers import split_example

  _, tok, prompts, _ = setup
  for p, row in zip(prompts, ROWS):
    ids, answer = split_example(tok, row, None)
    assert list(p.ids) == ids and p.stop_id == answer[-1] == tok.eos_id
    assert p.row["output"] == row["output"] and p.text == tok.decode(list(p.ids))


def test_batch_layout_masks_and_advantages(setup):
  r = _rollouts(setup)
  batch = next(r)
  n, t = batch["input_ids"].shape
  assert n == P * G and t % 16 == 0 and t >= max(len(p.ids) for p in r.prompts) + MAX_NEW - 1
  chosen = [r.prompts[i] for i in r.prompt_indices(0)]
  completions = []
  for row in range(n):
    prompt = chosen[row // G].ids  # a prompt's G completions are adjacent
    k = len(prompt)
    mask, seg = batch["loss_mask"][row], batch["segment_ids"][row]
    assert list(batch["input_ids"][row, :k]) == list(prompt)
    assert not mask[: k - 1].any()  # prompt tokens are never scored
    c = int(mask.sum())
    assert 1 <= c <= MAX_NEW and mask[k - 1 : k - 1 + c].all()  # every generated token is
    assert seg[: k - 1 + c].all() and not seg[k - 1 + c :].any()
    assert list(batch["positions"][row, : k - 1 + c]) == list(range(k - 1 + c))
    gen = batch["targets"][row, k - 1 : k - 1 + c]
    assert list(batch["input_ids"][row, k : k - 1 + c]) == list(gen[:-1])
    if c < MAX_NEW:  # stopped early: on the closing token (EOS), which is scored
      assert gen[-1] == chosen[row // G].stop_id
    completions.append(gen)
  # the advantages are the group-normalised weighted rewards of the decoded completions
  _, tok, _, rewards = setup
  texts = [tok.decode([int(x) for x in g if x != tok.eos_id]) for g in completions]
  _, total = rewards([p.text for p in chosen for _ in range(G)], texts, [{}] * n)
  np.testing.assert_allclose(batch["advantages"], group_advantages(total, G), rtol=1e-5)
  m = r.metrics()
  for key in ("reward", "reward_std", "reward_length", "reward_length_std", "reward_has_e"):
    assert np.isfinite(m[key]), key
  assert m["reward"] == pytest.approx(float(total.mean()), rel=1e-5)
  assert m["completion_length"] == pytest.approx(batch["loss_mask"].sum() / n)
  assert m["sampling_tokens_per_sec"] > 0 and r.metrics() == {}  # reset after reading


def test_same_seed_same_batches_and_resume_replays(setup):
  a, b = _rollouts(setup), _rollouts(setup)
  first = [next(a) for _ in range(3)]
  for x in first:
    y = next(b)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  other = next(_rollouts(setup, seed=1))
  assert not np.array_equal(other["input_ids"], first[0]["input_ids"])
  c = _rollouts(setup)
  next(c)
  state = c.get_state()
  resumed = _rollouts(setup)
  resumed.set_state(state)
  for x in first[1:]:
    y = next(resumed)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert resumed.get_state() == {"step": 3}


def test_prompts_cover_every_row_each_epoch(setup):
  r = _rollouts(setup)
  n = len(r.prompts)
  seen = [i for s in range(n // P) for i in r.prompt_indices(s)]
  assert sorted(seen) == list(range(n))


def test_bad_settings(setup):
  with pytest.raises(ConfigError, match="num_generations 1"):
    _bad(setup, num_generations=1)
  with pytest.raises(ConfigError, match="prompts_per_step 99"):
    _bad(setup, prompts_per_step=99)
  with pytest.raises(ConfigError, match="max_position_embeddings 16"):
    _bad(setup, max_positions=16)
  with pytest.raises(RuntimeError, match="bind"):
    from gemmax.posttrain import GRPORollouts

    _, tok, prompts, rewards = setup
    next(
      GRPORollouts(
        prompts, tok, rewards, num_generations=2, prompts_per_step=1, max_completion_length=2
      )
    )


def _bad(setup, **kw):
  from gemmax.posttrain import GRPORollouts

  _, tok, prompts, rewards = setup
  args = dict(num_generations=G, prompts_per_step=P, max_completion_length=MAX_NEW)
  return GRPORollouts(prompts, tok, rewards, **{**args, **kw})

"""Classification under the training prompt format: shared-prompt choice scoring against plain
per-pair scoring, label likelihood and generated answers against naive full forwards."""

import jax
import numpy as np
import pytest
from flax import nnx

from gemmax.data import load_tokenizer, tokenize_example
from gemmax.evals import answers
from gemmax.evals.choices import choice_logprobs, shared_prefix
from gemmax.evals.scoring import continuation_logprobs
from gemmax.models import ModelConfig, Transformer

ROWS = [
  {"instruction": "Which kind of answer? Reply with one word.", "input": q, "output": a}
  for q, a in [
    ("Who wrote Hamlet?", "human"),
    ("Where is Lima?", "location"),
    ("How many legs has a spider?", "number"),
    ("What is a cat?", "entity"),
    ("Why is the sky blue?", "description"),
  ]
]
CLASSES = sorted({r["output"] for r in ROWS})


@pytest.fixture(scope="module")
def tiny():
  tok = load_tokenizer("checkpoints/gemmax-tiny")
  cfg = ModelConfig.preset("gemma2-tiny", vocab_size=tok.vocab_size)  # window 8: prompts pass it
  return Transformer(cfg, rngs=nnx.Rngs(3)), tok


@nnx.jit
def _forward(model, ids):
  return model(ids)


@pytest.mark.parametrize("preset", ["gemma2-tiny", "llama3-tiny"])
@pytest.mark.parametrize("shared", [0, 20])
def test_choice_logprobs_equal_per_pair_scoring(preset, shared):
  model = Transformer(ModelConfig.preset(preset), rngs=nnx.Rngs(0))
  rs = np.random.RandomState(1)
  head = list(rs.randint(3, 256, shared))
  prompts = [head + list(rs.randint(3, 256, n)) for n in (1, 7, 3, 12, 30)]
  choices = [[7], [8, 9, 10], [11, 12], [13, 14, 15, 16, 17]]
  assert shared_prefix(prompts) == (shared if shared else 0)
  got = choice_logprobs(model, prompts, choices, batch_size=3, progress=False)
  want = continuation_logprobs(
    model,
    [p for p in prompts for _ in choices],
    [c for _ in prompts for c in choices],
    batch_size=4,
    progress=False,
  )
  for i in range(len(prompts)):
    for j in range(len(choices)):
      np.testing.assert_allclose(got[i][j], want[i * len(choices) + j], atol=2e-5)


@pytest.mark.parametrize("template", ["alpaca", "gemma"])
def test_label_scores_equal_naive_forward(tiny, template):
  model, tok = tiny
  scores = answers.label_scores(model, tok, ROWS, CLASSES, template=template, progress=False)
  for i, row in enumerate(ROWS):
    for j, c in enumerate(CLASSES):
      ids, mask = tokenize_example(tok, {**row, "output": c}, "alpaca", template)
      logp = np.asarray(jax.nn.log_softmax(_forward(model, np.asarray([ids]))[0], -1))
      where = np.flatnonzero(mask)
      want = sum(logp[k - 1, ids[k]] for k in range(where[0], where[-1] + 1))
      assert scores[i, j] == pytest.approx(want, abs=1e-3)
  m = answers.classify_rows(model, tok, ROWS, template=template, progress=False)
  assert m["predictions"] == [CLASSES[k] for k in scores.argmax(1)]


def test_generated_answers_equal_naive_greedy(tiny):
  model, tok = tiny
  m = answers.generate_rows(
    model, tok, ROWS, template="gemma", max_new_tokens=5, batch_size=2, progress=False
  )
  stop = tok.token_to_id("<end_of_turn>")
  for row, got in zip(ROWS, m["answers"]):
    prompt, _ = answers.split_example(tok, row, "gemma")
    ids, new = list(prompt), []
    for _ in range(5):
      nxt = int(np.argmax(np.asarray(_forward(model, np.asarray([ids])))[0, -1]))
      if nxt == stop:
        break
      ids.append(nxt)
      new.append(nxt)
    assert got == tok.decode(new).strip()
  assert m["exact_match"] == np.mean([a == r["output"] for a, r in zip(m["answers"], ROWS)])
  assert len(m["confusion_matrix"]) == len(CLASSES) + 1  # the last row/column: "(other)"
  both = answers.classify_rows(
    model, tok, ROWS, template="gemma", answer_tokens=5, progress=False
  )  # one pass: likelihoods and answers
  assert both["generated"]["answers"] == m["answers"]


def test_a_prompt_that_depends_on_the_answer_is_refused(tiny):
  _, tok = tiny
  row = {"instruction": "The answer is hu", "input": "", "output": "human"}  # "hu|location"
  with pytest.raises(ValueError, match="depends on the answer"):  # tokenizes across the border
    answers.encode_rows(
      tok,
      [row],
      ["human", "location"],
      template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )

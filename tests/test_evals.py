"""gemmax.evals: metrics against hand-computed values, scoring against a naive full forward."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from gemmax import evals
from gemmax.models import ModelConfig, Transformer


class CharTokenizer:
  bos_id, eos_id, pad_id = 1, 2, 0

  def encode(self, text, add_bos=True):
    return ([1] if add_bos else []) + [b + 3 for b in text.encode("latin-1")]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("latin-1")


@pytest.fixture(scope="module")
def model():
  return Transformer(ModelConfig.preset("gemma2-tiny", vocab_size=259), rngs=nnx.Rngs(4))


@nnx.jit
def _forward(model, ids):
  return model(ids)


def _naive_logprobs(model, ids):
  """log p(ids[j] | ids[:j]) for j >= 1 from one unpadded forward."""
  logits = np.asarray(_forward(model, np.asarray([ids], np.int32)))[0]
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  return np.array([logp[j - 1, ids[j]] for j in range(1, len(ids))])


def test_metrics_by_hand():
  y_true = [0, 0, 0, 1, 1, 2, 2, 2]
  y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
  m = evals.classification_metrics(y_true, y_pred, ["a", "b", "c"])
  assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
  assert m["accuracy"] == pytest.approx(5 / 8)
  # a: P 2/3 R 2/3 F 2/3; b: P 1/2 R 1/2 F 1/2; c: P 2/3 R 2/3 F 2/3
  assert m["per_class"]["b"] == dict(precision=0.5, recall=0.5, f1=0.5, support=2)
  assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
  assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
  # a class never predicted and never true: P = R = F1 = 0, still in the macro mean
  m = evals.classification_metrics([0, 1], [0, 0], ["x", "y", "z"])
  assert m["per_class"]["x"]["precision"] == 0.5 and m["per_class"]["y"]["recall"] == 0
  assert m["macro_f1"] == pytest.approx((2 * 0.5 * 1 / 1.5) / 3)
  table = evals.format_report(m)
  assert "macro-F1" in table and "confusion matrix" in table


def test_confusion_png(tmp_path):
  m = evals.classification_metrics([0, 1, 1], [0, 1, 0], ["pos", "neg"])
  path = evals.save_confusion_png(m, str(tmp_path / "cm.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_continuation_logprobs_match_naive(model):
  pairs = [([1, 10, 20], [30, 40]), ([1, 5], [6, 7, 8, 9, 10]), ([1] + list(range(50, 90)), [3])]
  got = evals.continuation_logprobs(
    model, [p for p, _ in pairs], [c for _, c in pairs], batch_size=2, progress=False
  )
  for (p, c), lp in zip(pairs, got):
    np.testing.assert_allclose(lp, _naive_logprobs(model, p + c)[len(p) - 1 :], atol=1e-5)


def test_classification_scores_and_few_shot(model):
  tok = CharTokenizer()
  texts, classes = ["good film", "bad film", "so-so"], ["pos", "neg", "meh"]
  shots = [("great", "pos")]
  kw = dict(template="Review: {text}\nLabel:", few_shot=shots)
  scores = evals.label_scores(model, tok, texts, classes, reduction="sum", progress=False, **kw)
  for i, t in enumerate(texts):
    prompt = tok.encode("Review: great\nLabel: pos\n\nReview: " + t + "\nLabel:")
    for j, c in enumerate(classes):
      lab = tok.encode(" " + c, add_bos=False)
      assert scores[i, j] == pytest.approx(
        _naive_logprobs(model, prompt + lab)[len(prompt) - 1 :].sum(), abs=1e-4
      )
  mean = evals.label_scores(model, tok, texts, classes, reduction="mean", progress=False, **kw)
  np.testing.assert_allclose(mean, scores / 4, rtol=1e-6)  # every label is 4 tokens
  m = evals.evaluate_classification(
    model, tok, texts, ["pos", "neg", "meh"], classes, progress=False, **kw
  )
  assert m["predictions"] == [classes[k] for k in mean.argmax(1)]
  assert m["accuracy"] == np.mean([p == g for p, g in zip(m["predictions"], ["pos", "neg", "meh"])])


def test_perplexity_matches_naive(model):
  tok = CharTokenizer()
  text = "the quick brown fox jumps over the lazy dog"
  ids = tok.encode(text)
  naive = -_naive_logprobs(model, ids)
  r = evals.perplexity(model, tok, text, window=64, progress=False)
  assert r["tokens"] == len(ids) - 1
  assert r["nats_per_token"] == pytest.approx(naive.mean(), abs=1e-5)
  assert r["perplexity"] == pytest.approx(math.exp(naive.mean()), rel=1e-5)
  assert r["bits_per_token"] == pytest.approx(naive.mean() / math.log(2), rel=1e-6)
  # Strided: token j is scored with context ids[max(0, j - ctx)... ] as the windows dictate.
  s = evals.perplexity(model, tok, text, window=16, stride=8, progress=False)
  assert s["tokens"] == len(ids) - 1
  want, done, begin = [], 1, 0
  while done < len(ids):
    end = min(begin + 16, len(ids))
    want += list(-_naive_logprobs(model, ids[begin:end])[done - begin - 1 :])
    done, begin = end, end - 8
  assert s["nats_per_token"] == pytest.approx(np.mean(want), abs=1e-5)
  assert s["nats_per_token"] != pytest.approx(r["nats_per_token"], abs=1e-4)


@pytest.mark.parametrize(
  "kw,needle",
  [
    (dict(batch_size=-1), "batch_size must be an integer >= 1"),  # once scored nothing: ppl 1.0
    (dict(batch_size=0), "batch_size"),
    (dict(window=1), "window 1"),
    (dict(window=4096), "max_position_embeddings"),  # past the model's context
    (dict(window=16, stride=-1), "stride -1"),
  ],
)
def test_perplexity_refuses_what_would_score_nothing(model, kw, needle):
  with pytest.raises(ValueError, match=needle):
    evals.perplexity(model, CharTokenizer(), "some text to score", progress=False, **kw)


def test_scoring_refuses_a_context_longer_than_the_model(model):
  with pytest.raises(ValueError, match="max_len 9999"):
    evals.continuation_logprobs(model, [[1]], [[5]], max_len=9999, progress=False)


def test_exact_match(model):
  tok = CharTokenizer()
  from gemmax.sampling import Sampler

  prompts = ["a", "bb"]
  gen = Sampler(model, tok).generate(prompts, 4, stop=["\n"]).text
  r = evals.exact_match(
    model, tok, prompts, [gen[0].upper() + "  ", "nope"], max_new_tokens=4, progress=False
  )
  assert r["predictions"] == gen and r["exact_match"] == 0.5

"""Classification of instruction rows (Alpaca records whose `output` is the class) under the
prompt format training uses — the Alpaca prompt or a chat template, the model's own included:
by label likelihood and by generated answer.

Each row is tokenized as training tokenizes it (`gemmax.data.tokenize_example` with the row's
output set to each class): the ids before the first target token are the prompt, the target ids
(the label and the end-of-turn / eos that closes it) are the class's answer. So the likelihood
scored is exactly what fine-tuning raised, and a generated answer is read the way training wrote
it: greedy tokens up to that closing token.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from gemmax.data.formats import tokenize_example
from gemmax.errors import GemmaxError
from gemmax.evals.choices import score_and_answer
from gemmax.evals.metrics import classification_metrics
from gemmax.evals.scoring import continuation_logprobs


def split_example(tokenizer, record: Mapping, template=None) -> tuple[list[int], list[int]]:
  """(prompt ids, answer ids) of one Alpaca record: the answer is the trained (target) span."""
  ids, mask = tokenize_example(tokenizer, record, "alpaca", template)
  where = np.flatnonzero(mask)
  if not len(where):
    raise GemmaxError(f"record {dict(record)!r:.80}: no answer tokens")
  return ids[: where[0]].tolist(), ids[where[0] : where[-1] + 1].tolist()


def encode_rows(tokenizer, records: Sequence[Mapping], classes: Sequence[str], template=None):
  """(prompts [N], answers [N][C]): every row's prompt ids and each class's answer ids."""
  prompts, answers = [], []
  for r in records:
    pairs = [split_example(tokenizer, {**r, "output": c}, template) for c in classes]
    if any(p != pairs[0][0] for p, _ in pairs):
      raise GemmaxError(
        f"the prompt of {r.get('input') or r.get('instruction')!r:.60} depends on "
        "the answer under this template; cannot score classes against one prompt"
      )
    prompts.append(pairs[0][0])
    answers.append([a for _, a in pairs])
  return prompts, answers


def _gold(records, classes):
  gold = [str(r["output"]).strip() for r in records]
  classes = list(classes or sorted(set(gold)))
  unknown = sorted(set(gold) - set(classes))
  if unknown:
    raise GemmaxError(f"gold labels {unknown} are not among the classes {classes}")
  return gold, classes


def _answer_metrics(tokenizer, answers, stop: set, gold, classes) -> dict:
  """Exact match of the greedy answers (cut at the closing token) and their confusion matrix,
  with an extra "(other)" column for answers that are no class."""
  texts = []
  for a in answers:
    end = next((k for k, t in enumerate(a) if t in stop), len(a))
    texts.append(tokenizer.decode(a[:end]).strip())
  index = {c: i for i, c in enumerate(classes)}
  m = classification_metrics(
    [index[g] for g in gold], [index.get(t, len(classes)) for t in texts], classes + ["(other)"]
  )
  m.update(
    exact_match=float(np.mean([t == g for t, g in zip(texts, gold)])),
    answers=texts,
    not_a_class=sum(t not in index for t in texts),
    macro_f1=float(np.mean([m["per_class"][c]["f1"] for c in classes])),
  )  # real classes
  return m


def classify_rows(
  model,
  tokenizer,
  records: Sequence[Mapping],
  classes=None,
  *,
  template=None,
  reduction: str = "sum",
  answer_tokens: int = 0,
  batch_size: int = 16,
  progress: bool = True,
) -> dict:
  """Accuracy, macro-F1, per-class report and confusion matrix by label likelihood (sum or mean
  of the answer's token logprobs). With `answer_tokens`, the same pass also answers greedily
  (that many tokens at most): m["generated"] holds exact match and its confusion matrix."""
  if reduction not in ("sum", "mean"):
    raise GemmaxError(f"reduction {reduction!r} is not 'sum' or 'mean'")
  gold, classes = _gold(records, classes)
  if len(classes) < 2:
    raise GemmaxError(f"classification needs at least 2 classes, got {list(classes)}")
  prompts, answers = encode_rows(tokenizer, records, classes, template)
  pad = max(getattr(tokenizer, "pad_id", 0) or 0, 0)
  kw = dict(batch_size=batch_size, pad_id=pad, progress=progress, desc="classifying")
  greedy = None
  stop = sorted({row[0][-1] for row in answers})  # the token that closes a trained answer
  if all(a == answers[0] for a in answers):  # the usual case: one prompt pass, classes share it
    lps, greedy = score_and_answer(
      model, prompts, answers[0], answer_steps=answer_tokens, stop=stop, **kw
    )
  else:  # an answer whose tokens depend on the prompt (a merge across the boundary)
    flat = continuation_logprobs(
      model, [p for p in prompts for _ in classes], [a for row in answers for a in row], **kw
    )
    lps = [flat[i * len(classes) : (i + 1) * len(classes)] for i in range(len(prompts))]
  agg = np.sum if reduction == "sum" else np.mean
  scores = np.asarray([[agg(x) for x in row] for row in lps], np.float64)
  pred = scores.argmax(1)
  m = classification_metrics([classes.index(g) for g in gold], pred.tolist(), classes)
  m.update(predictions=[classes[i] for i in pred], reduction=reduction, scores=scores.tolist())
  if answer_tokens:
    if greedy is None:
      greedy = _greedy(model, tokenizer, prompts, answer_tokens, stop, batch_size)
    m["generated"] = _answer_metrics(tokenizer, greedy, set(stop), gold, classes)
  return m


def _greedy(model, tokenizer, prompts, steps: int, stop, batch_size: int) -> list[list[int]]:
  from gemmax.sampling import Sampler

  sampler, out = Sampler(model, tokenizer), []
  for i in range(0, len(prompts), batch_size):
    out += sampler.generate(prompts[i : i + batch_size], steps, stop=list(stop)).tokens
  return out


def generate_rows(
  model,
  tokenizer,
  records: Sequence[Mapping],
  classes=None,
  *,
  template=None,
  max_new_tokens: int = 8,
  batch_size: int = 16,
  progress: bool = True,
) -> dict:
  """Greedy answers to each row's prompt, read up to the token that closes a trained answer;
  exact match against the gold label (whitespace-trimmed) and the confusion matrix with an
  "(other)" column for answers that are no class."""
  gold, classes = _gold(records, classes)
  prompts, answers = encode_rows(tokenizer, records, classes[:1], template)
  pad = max(getattr(tokenizer, "pad_id", 0) or 0, 0)
  stop = sorted({a[0][-1] for a in answers})
  _, greedy = score_and_answer(
    model,
    prompts,
    answers[0][0:1],
    answer_steps=max_new_tokens,
    stop=stop,
    batch_size=batch_size,
    pad_id=pad,
    progress=progress,
    desc="generating",
  )
  return _answer_metrics(tokenizer, greedy, set(stop), gold, classes)


def label_scores(model, tokenizer, records, classes, **kw) -> np.ndarray:
  """[N, C] sum or mean log-likelihood of each class's answer after each row's prompt."""
  return np.asarray(classify_rows(model, tokenizer, records, classes, **kw)["scores"])

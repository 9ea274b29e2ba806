"""Evaluation: classification by label log-likelihood, exact match, perplexity, reports."""

from gemmax.evals.classification import build_prompt, evaluate_classification, label_scores
from gemmax.evals.exact_match import exact_match, normalize
from gemmax.evals.metrics import (
  classification_metrics,
  confusion_matrix,
  format_report,
  per_class,
  save_confusion_png,
)
from gemmax.evals.perplexity import perplexity, perplexity_of_file
from gemmax.evals.scoring import continuation_logprobs

__all__ = [
  "build_prompt",
  "evaluate_classification",
  "label_scores",
  "exact_match",
  "normalize",
  "classification_metrics",
  "confusion_matrix",
  "format_report",
  "per_class",
  "save_confusion_png",
  "perplexity",
  "perplexity_of_file",
  "continuation_logprobs",
]

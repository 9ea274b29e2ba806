"""Knowledge distillation: a teacher top-k store (offline), online KL/JSD losses, on-policy GKD.

Offline:   write_teacher_store(teacher, tok, sources, dir, k=...) -> ArrayRecord shards + manifest;
           store_pipeline(TopKStore(dir).check(tokenizer=tok), DataConfig(...)) -> batches with
           topk_ids / topk_probs / topk_tail; the loss is topk_distill_loss (top-k + tail mass).
Online:    TeacherStudent(student, teacher) + distill_loss_fn(DistillLoss(divergence="jsd", ...))
           as gemmax.train.Trainer(..., loss_fn=..., trainable=student_filter(pair)).
On-policy: OnPolicyBatches(data, fraction=lambda, ...).bind(trainer).
Every loss is chunked over tokens (no [B, T, V] logits) and masked by the batch's loss_mask.
"""

from gemmax.distill.chunked import DistillLoss, DistillSums, distill_sums
from gemmax.distill.losses import (
  DIVERGENCES,
  divergence,
  forward_kl,
  generalized_jsd,
  reverse_kl,
  topk_distill_loss,
  topk_teacher_entropy,
)
from gemmax.distill.onpolicy import OnPolicyBatches, onpolicy_batch
from gemmax.distill.pipeline import store_pipeline
from gemmax.distill.report import heldout_metrics, plot_comparison
from gemmax.distill.step import TeacherStudent, distill_loss_fn, model_distill_sums, student_filter
from gemmax.distill.store import (
  StoreError,
  StoreSpec,
  TopKStore,
  dataset_fingerprint,
  decode_record,
  encode_record,
  model_fingerprint,
)
from gemmax.distill.teacher import select_topk, write_teacher_store

__all__ = [
  "DIVERGENCES",
  "DistillLoss",
  "DistillSums",
  "OnPolicyBatches",
  "StoreError",
  "StoreSpec",
  "TeacherStudent",
  "TopKStore",
  "dataset_fingerprint",
  "decode_record",
  "distill_loss_fn",
  "distill_sums",
  "divergence",
  "encode_record",
  "forward_kl",
  "generalized_jsd",
  "heldout_metrics",
  "model_distill_sums",
  "model_fingerprint",
  "onpolicy_batch",
  "plot_comparison",
  "reverse_kl",
  "select_topk",
  "store_pipeline",
  "student_filter",
  "topk_distill_loss",
  "topk_teacher_entropy",
  "write_teacher_store",
]

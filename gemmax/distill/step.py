"""The distillation loss as a gemmax.train loss_fn, and the teacher-student pair module.

    pair = TeacherStudent(student, teacher)
    trainer = Trainer(pair, opt, loop, train_data=..., trainable=student_filter(pair),
                      loss_fn=distill_loss_fn(DistillLoss(kd_ratio=0.5)))

The teacher sits in the pair, so gemmax.train.split_model puts it into the frozen `rest`: it gets
no gradient, no optimizer state and is never checkpointed; its arrays keep whatever sharding it
was loaded with (load_hf(mesh=...)). With stored top-k batches the model can be the student
alone (no teacher in memory).
"""

from __future__ import annotations

from flax import nnx

from gemmax.distill.chunked import DistillLoss, DistillSums, distill_sums
from gemmax.errors import GemmaxError

TOPK_KEYS = ("topk_ids", "topk_probs", "topk_tail")


class TeacherStudent(nnx.Module):
  """Holds a student (trained) and a teacher (frozen); same vocabulary, any sizes.

  `deterministic` follows model.train() / model.eval() (gemmax.train splits both): a training
  step with kd_ratio = 0 (a CE-only baseline) skips the teacher; evaluation always runs it, so
  held-out KL is measured either way.
  """

  def __init__(self, student, teacher):
    if student.config.vocab_size != teacher.config.vocab_size:
      raise GemmaxError(
        f"student vocabulary {student.config.vocab_size} != teacher vocabulary "
        f"{teacher.config.vocab_size}: distillation needs the same tokenizer"
      )
    self.student, self.teacher = student, teacher
    self.deterministic = False


def student_filter(model):
  """The trainable filter: the student's adapters if it has any, else all its nnx.Params."""
  from gemmax.train.step import trainable_filter

  if isinstance(model, TeacherStudent):
    return nnx.All(nnx.PathContains("student"), trainable_filter(model.student))
  return trainable_filter(model)


def model_distill_sums(model, batch: dict, loss: DistillLoss, *, chunk=None) -> DistillSums:
  """Run the student (and the teacher when the batch has no stored top-k) on a batch dict.

  model: a Transformer (offline: the batch carries topk_ids/topk_probs/topk_tail) or a
  TeacherStudent (online: the teacher scores the batch's tokens; offline batches ignore it).
  A batch with neither (e.g. held-out text for a student alone) gets plain CE; kd, kl = 0.
  """
  student = model.student if isinstance(model, TeacherStudent) else model
  kw = dict(positions=batch.get("positions"), segment_ids=batch.get("segment_ids"))
  h = student.hidden_states(batch["input_ids"], **kw)
  topk = teacher = None
  if all(k in batch for k in TOPK_KEYS):
    topk = tuple(batch[k] for k in TOPK_KEYS)
  elif isinstance(model, TeacherStudent) and (loss.kd_ratio > 0 or model.deterministic):
    t = model.teacher
    teacher = (t.hidden_states(batch["input_ids"], **kw), t.output_weight(), t.output_head()[2])
  w, vocab_major, cap = student.output_head()
  return distill_sums(
    h,
    w,
    batch["targets"],
    batch["loss_mask"],
    loss=loss,
    softcap=cap,
    topk=topk,
    teacher=teacher,
    chunk=chunk,
    vocab_major=vocab_major,
  )


def distill_loss_fn(loss: DistillLoss):
  """`loss_fn(model, batch, chunk=None) -> DistillSums` for gemmax.train (make_train_step,
  make_eval_step, Trainer(loss_fn=...))."""
  loss.validate()

  def loss_fn(model, batch, chunk=None):
    return model_distill_sums(model, batch, loss, chunk=chunk)

  return loss_fn

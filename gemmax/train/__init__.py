"""Training: chunked next-token loss, the DPO and GRPO losses, AdamW recipe, pure jitted steps, the loop, checkpoints."""

from gemmax.train.checkpoints import RunCheckpointer, average_checkpoints
from gemmax.train.dpo import dpo_loss
from gemmax.train.grpo import group_advantages, grpo_loss
from gemmax.train.losses import (
  CESums,
  cross_entropy,
  cross_entropy_sums,
  model_loss_sums,
  naive_cross_entropy,
)
from gemmax.train.memory import abstract_train_state, state_bytes, train_state_bytes
from gemmax.train.metrics import MetricsWriter, plot_loss_curve, read_jsonl
from gemmax.train.optimizer import (
  OptimizerConfig,
  decay_mask,
  learning_rate_schedule,
  make_optimizer,
)
from gemmax.train.step import SplitModel, make_eval_step, make_train_step, split_model
from gemmax.train.trainer import Trainer, TrainerConfig

__all__ = [
  "abstract_train_state",
  "state_bytes",
  "train_state_bytes",
  "CESums",
  "MetricsWriter",
  "OptimizerConfig",
  "RunCheckpointer",
  "SplitModel",
  "Trainer",
  "TrainerConfig",
  "average_checkpoints",
  "cross_entropy",
  "cross_entropy_sums",
  "decay_mask",
  "dpo_loss",
  "group_advantages",
  "grpo_loss",
  "learning_rate_schedule",
  "make_eval_step",
  "make_optimizer",
  "make_train_step",
  "model_loss_sums",
  "naive_cross_entropy",
  "plot_loss_curve",
  "read_jsonl",
  "split_model",
]

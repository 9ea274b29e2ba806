"""Post-training from the model's own samples: GRPO rollouts (prompts -> G sampled completions
each -> rewards -> group advantages -> a training batch for gemmax.train.grpo_loss_fn)."""

from gemmax.posttrain.rollouts import GRPORollouts, PromptRow, read_prompt_rows

__all__ = ["GRPORollouts", "PromptRow", "read_prompt_rows"]

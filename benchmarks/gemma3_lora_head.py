"""LoRA step on the Gemma 3 270M architecture (262,144-entry vocabulary): the output head computed
only for the scored tokens (what train/losses.py does) against the head computed for every token.

    PYTHONPATH=. python benchmarks/gemma3_lora_head.py [--steps 3] [--batch 8] [--seq 256]

Random bf16 weights of the real architecture (the timing does not depend on the values), LoRA r16
on every linear layer, a batch like the TREC-6 demo's: rows of packed Alpaca questions whose
answers (label + eos, ~3 tokens per question, 3 questions per row) are the only scored tokens.
"Dense head" scores every token (loss mask of ones): the same model and batch with the head's
matmuls for all B*T tokens, which a loss that computes full logits and masks afterwards pays.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gemmax.peft as gp
from gemmax.models import ModelConfig, Transformer
from gemmax.train.losses import model_loss_sums


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  a = ap.parse_args()
  cfg = ModelConfig.preset("gemma3-270m", dtype="bfloat16", param_dtype="bfloat16")
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  gp.apply(model, method="lora", rank=16, alpha=32, targets="all-linear")
  rng = np.random.RandomState(0)
  ids = rng.randint(3, cfg.vocab_size, (a.batch, a.seq + 1))
  sparse = np.zeros((a.batch, a.seq), np.float32)
  for end in (a.seq // 3, 2 * a.seq // 3, a.seq):  # three answers of 3 tokens per row
    sparse[:, end - 3 : end] = 1.0
  base = dict(input_ids=jnp.asarray(ids[:, :-1]), targets=jnp.asarray(ids[:, 1:]))
  trainable = gp.trainable_filter(model)

  @nnx.jit
  def step(model, batch):
    def loss(m):
      s = model_loss_sums(m, batch)
      return s.loss_sum / jnp.maximum(s.count, 1.0)

    return nnx.value_and_grad(loss, argnums=nnx.DiffState(0, trainable))(model)

  results = {}
  for name, mask in (("scored tokens only", sparse), ("dense head", np.ones_like(sparse))):
    batch = dict(base, loss_mask=jnp.asarray(mask))
    t0 = time.perf_counter()
    jax.block_until_ready(step(model, batch))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(step(model, batch))
      times.append(time.perf_counter() - t0)
    results[name] = float(np.median(times))
    print(
      f"{name:20s} scored {int(mask.sum()):5d}/{mask.size} tokens: step {results[name]:.2f} s "
      f"(median of {a.steps}; first call {compile_s:.1f} s)",
      flush=True,
    )
  ratio = results["dense head"] / results["scored tokens only"]
  print(f"dense head / scored only: {ratio:.2f}x ({jax.devices()[0].device_kind})")


if __name__ == "__main__":
  main()

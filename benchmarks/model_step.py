"""Forward and forward+backward of the same model: gemmax (jitted) vs transformers (torch eager).

Also compares XLA's cost analysis of the compiled fwd+bwd with the model's analytic FLOPs.
Run: JAX_PLATFORMS=cpu python benchmarks/model_step.py [--steps 5]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from gemmax.convert import load_hf  # noqa: E402
from gemmax.models import analytic_flops  # noqa: E402
from hf_models import gemma2_config, make_hf_model, save_hf_model  # noqa: E402


def timed(fn, steps):
  fn()  # warm-up / compile
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=256)
  args = ap.parse_args()
  torch.set_num_threads(os.cpu_count())
  cfg = gemma2_config(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    sliding_window=128,
    query_pre_attn_scalar=64,
    max_position_embeddings=1024,
  )
  hf = make_hf_model(cfg)
  path = save_hf_model(hf, tempfile.mkdtemp())
  model = load_hf(path, dtype="float32")
  ids = np.random.RandomState(0).randint(0, 8192, (args.batch, args.seq))
  tids = torch.tensor(ids)
  jids = jnp.asarray(ids)

  def loss_fn(m, x):
    logits = m(x)
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.take_along_axis(logp, x[:, 1:, None], -1).mean()

  fwd = nnx.jit(lambda m, x: m(x))
  grad = nnx.jit(nnx.grad(loss_fn))
  rows = []
  with torch.no_grad():
    t_hf_fwd = timed(lambda: hf(tids).logits, args.steps)
  t_gx_fwd = timed(lambda: jax.block_until_ready(fwd(model, jids)), args.steps)

  def hf_step():
    hf.zero_grad(set_to_none=True)
    hf(tids, labels=tids).loss.backward()

  t_hf_bwd = timed(hf_step, args.steps)
  t_gx_bwd = timed(lambda: jax.block_until_ready(grad(model, jids)), args.steps)
  tokens = args.batch * args.seq
  rows.append(("forward", t_gx_fwd, t_hf_fwd))
  rows.append(("forward+backward", t_gx_bwd, t_hf_bwd))

  graphdef, state = nnx.split(model)
  pure = jax.jit(jax.grad(lambda s, x: loss_fn(nnx.merge(graphdef, s), x)))
  cost = pure.lower(state, jids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = float(cost.get("flops", float("nan")))
  from gemmax.models import ModelConfig

  analytic = analytic_flops(ModelConfig.from_hf(cfg.to_dict()), args.batch, args.seq)

  print(
    f"config: gemma2-style vocab 8192, hidden 512, 8 layers, 8/4 heads, head_dim 64, "
    f"window 128, batch {args.batch} x {args.seq}, float32, {os.cpu_count()} CPU threads"
  )
  print("| pass | gemmax (ms) | transformers (ms) | gemmax tokens/s | speed-up |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for name, g, h in rows:
    print(f"| {name} | {g * 1e3:.0f} | {h * 1e3:.0f} | {tokens / g:,.0f} | {h / g:.2f}x |")
  print(
    f"XLA cost analysis fwd+bwd: {xla_flops / 1e9:.1f} GFLOP; analytic (3x forward, dense "
    f"attention): {analytic / 1e9:.1f} GFLOP; ratio {xla_flops / analytic:.3f}"
  )
  print(f"fwd_vs_hf={rows[0][2] / rows[0][1]:.2f} fwdbwd_vs_hf={rows[1][2] / rows[1][1]:.2f}")


if __name__ == "__main__":
  main()

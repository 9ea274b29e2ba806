"""LoRA / DoRA train-step throughput: gemmax (JAX, XLA:CPU) vs transformers + peft (torch CPU).

Same model and recipe on both sides, measured in one run on one machine: Gemma 2 style, vocab 8192,
hidden 512, 8 layers, 8 heads / 4 kv heads, head_dim 64, window 128, batch 4 x 256 tokens, rank 16
on every linear layer, AdamW. `--dtype bfloat16` (default): the mixed-precision recipe that
gemmax's LoRA fine-tuning runs (experiments/configs/finetune_lora.py), on both sides: bf16
compute with float32 adapters; gemmax stores the frozen base in bf16, peft is timed both under
torch.autocast over a float32 model and with its base cast to bf16 (peft keeps the adapters
float32), and the faster counts. `--dtype float32`: float32 compute on both sides.
gemmax runs in this process, which keeps freed host memory for reuse (`gemmax.host_memory`, as
gemmax's CLIs do on CPU; GEMMAX_KEEP_HOST_MEMORY=0 turns it off); peft runs in a plain worker
process of its own (`--peft-worker`), so that process-wide setting cannot touch its timings.
Rounds of the two frameworks are interleaved so background load hits both alike; the median step
is reported. Also: compiled peak memory (XLA memory_analysis) of a LoRA vs a full fine-tuning step.

Threads: XLA:CPU runs on its default pool, one thread per visible core; torch gets
`torch.set_num_threads(cores)`. peft is also timed with 1 thread as a control: torch's OpenMP
barriers spin, so on a machine shared with other work 2 threads can be far slower than 1. The ratio
is taken against the faster of the two peft settings, so load cannot flatter gemmax.

    python benchmarks/train_step.py [--dtype bfloat16|float32] [--steps 4] [--rounds 3] [--out PATH]

Last line: `lora_vs_peft=<ratio> dora_vs_peft=<ratio>` (tokens/s gemmax / tokens/s of best peft).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gemmax import host_memory  # noqa: E402

# Before JAX starts (gemmax.host_memory says why); process-wide, hence peft's own process.
HOST_MEMORY_KEPT = "--peft-worker" not in sys.argv and host_memory.keep_on_cpu(relaunch=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from gemmax import peft  # noqa: E402
from gemmax.models import ModelConfig, Transformer  # noqa: E402
from gemmax.train import OptimizerConfig, make_optimizer, make_train_step, split_model  # noqa: E402

B, T, RANK = 4, 256, 16
CFG = ModelConfig.preset(
  "gemma2-2b",
  vocab_size=8192,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=8,
  num_attention_heads=8,
  num_key_value_heads=4,
  head_dim=64,
  sliding_window=128,
  query_pre_attn_scalar=64,
  dtype="float32",
  param_dtype="float32",
)


def set_dtype(dtype: str):
  """The compute dtype of both sides: bfloat16 also stores gemmax's frozen base in bf16."""
  global CFG
  if dtype == "bfloat16":
    CFG = dataclasses.replace(CFG, dtype="bfloat16", param_dtype="bfloat16")


def batch_arrays(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, CFG.vocab_size, (B, T + 1)).astype(np.int32)
  return ids[:, :-1], ids[:, 1:]


# --- gemmax ------------------------------------------------------------------------------------
def gemmax_step(method: str | None):
  """(run_one_step, compiled) for method None (full), 'lora' or 'dora'."""
  # full fine-tuning trains float32 params whatever the compute dtype; adapters are float32
  cfg = CFG if method else dataclasses.replace(CFG, param_dtype="float32")
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  if method:
    peft.apply(model, method=method, rank=RANK, alpha=2 * RANK, targets="all-linear")
  sm = split_model(model)
  tx = make_optimizer(
    OptimizerConfig(learning_rate=1e-4, warmup_steps=0, steps=1000, clip_norm=1.0)
  )
  opt_state = tx.init(sm.params)
  ids, tg = batch_arrays()
  batch = dict(
    input_ids=ids,
    targets=tg,
    loss_mask=np.ones((B, T), np.int32),
    positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)),
    segment_ids=np.ones((B, T), np.int32),
  )
  batch = jax.device_put(batch)
  step = make_train_step(sm.train_def, tx)
  compiled = step.lower(sm.params, opt_state, sm.rest, batch, jax.random.key(0)).compile()
  state = {"params": sm.params, "opt": opt_state}

  def run():
    p, o, m = compiled(state["params"], state["opt"], sm.rest, batch, jax.random.key(0))
    state["params"], state["opt"] = p, o
    jax.block_until_ready(m["loss"])

  return run, compiled


# --- transformers + peft -----------------------------------------------------------------------
def torch_step(method: str, precision: str = "float32"):
  """precision: float32 | autocast (bf16 autocast over a float32 model) | bf16 (base cast to bf16,
  adapters float32 as peft keeps them)."""
  import torch
  import transformers
  from peft import LoraConfig, get_peft_model

  torch.manual_seed(0)
  hf = transformers.Gemma2Config(
    **{
      k: v
      for k, v in CFG.to_hf().items()
      if k not in ("architectures", "model_type", "torch_dtype")
    },
    attn_implementation="eager",
  )
  model = transformers.Gemma2ForCausalLM(hf).float()
  if precision == "bf16":
    model = model.to(torch.bfloat16)
  model = get_peft_model(
    model,
    LoraConfig(
      r=RANK,
      lora_alpha=2 * RANK,
      target_modules="all-linear",
      use_dora=method == "dora",
      lora_dropout=0.0,
    ),
  )
  model.train()
  opt = torch.optim.AdamW(
    [p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95)
  )
  ids, tg = batch_arrays()
  ids, tg = torch.from_numpy(ids).long(), torch.from_numpy(tg).long()

  def run():
    with (
      torch.autocast("cpu", dtype=torch.bfloat16)
      if precision == "autocast"
      else contextlib.nullcontext()
    ):
      logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tg.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  return run


def peft_worker(dtype: str):
  """Serves peft's runners to the main process: one JSON request per stdin line,
  {"method", "precision", "threads", "steps"} -> one JSON line of [wall, cpu] per step."""
  import torch

  runners = {}
  for line in sys.stdin:
    req = json.loads(line)
    key = (req["method"], req["precision"])
    if key not in runners:
      runners[key] = torch_step(*key)
    torch.set_num_threads(req["threads"])
    print(json.dumps(timed(runners[key], req["steps"])), flush=True)


class PeftProcess:
  """The main process's handle on the worker: `run(method, precision, threads, steps)`."""

  def __init__(self, dtype: str):
    env = dict(os.environ, GEMMAX_KEEP_HOST_MEMORY="0")
    self.proc = subprocess.Popen(
      [sys.executable, __file__, "--peft-worker", "--dtype", dtype],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )

  def run(self, method, precision, threads, steps):
    self.proc.stdin.write(
      json.dumps(dict(method=method, precision=precision, threads=threads, steps=steps)) + "\n"
    )
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"peft worker exited with status {self.proc.wait()}")
    return [tuple(x) for x in json.loads(line)]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def timed(run, steps):
  """[(wall seconds, process CPU seconds)] per step."""
  out = []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    run()
    out.append((time.perf_counter() - t, time.process_time() - c))
  return out


def memory_mib(compiled) -> float:
  m = compiled.memory_analysis()
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  return (total - m.alias_size_in_bytes) / 2**20


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument(
    "--dtype",
    choices=("float32", "bfloat16"),
    default="bfloat16",
    help="compute dtype on both sides (bfloat16: see the module docstring)",
  )
  ap.add_argument("--steps", type=int, default=4, help="timed steps per round")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default=None, help="default: results/train_step[_bfloat16].md")
  ap.add_argument("--peft-worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  set_dtype(args.dtype)
  if args.peft_worker:
    return peft_worker(args.dtype)
  args.out = args.out or os.path.join(
    os.path.dirname(__file__),
    "results",
    "train_step" + ("_bfloat16" if args.dtype == "bfloat16" else "") + ".md",
  )
  torch_version = importlib.metadata.version("torch")  # torch itself loads in the worker only
  threads = len(os.sched_getaffinity(0))  # cores this process may use (taskset respected)
  load_start = os.getloadavg()

  peft_proc = PeftProcess(args.dtype)
  runners, mem = {}, {}
  for method in ("lora", "dora"):
    run, compiled = gemmax_step(method)
    runners[f"gemmax {method}"] = run
    mem[method] = memory_mib(compiled)
    for precision in ("autocast", "bf16") if args.dtype == "bfloat16" else ("float32",):
      tag = "" if precision == "float32" else f", {precision}"
      for n in (threads, 1) if threads > 1 else (threads,):
        runners[f"peft {method}{tag}" + (", 1 thread" if n < threads else "")] = (
          method,
          precision,
          n,
        )
  _, full = gemmax_step(None)
  mem["full"] = memory_mib(full)
  del full

  def timed_with(entry, steps):
    return peft_proc.run(*entry, steps) if isinstance(entry, tuple) else timed(entry, steps)

  for entry in runners.values():  # warm-up
    timed_with(entry, 1)
  times = {k: [] for k in runners}
  per_round = []
  for _ in range(args.rounds):
    r = {}
    for name, entry in runners.items():
      r[name] = timed_with(entry, args.steps)
      times[name] += r[name]
    per_round.append(r)
  peft_proc.close()
  load_end = os.getloadavg()
  med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
  cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
  tps = {k: B * T / v for k, v in med.items()}

  def ratios(m_of):  # gemmax tokens/s over the faster peft setting's, from median step times
    return {
      m: min(v for k, v in m_of.items() if k.startswith(f"peft {m}")) / m_of[f"gemmax {m}"]
      for m in ("lora", "dora")
    }

  ratio = ratios(med)
  rounds_txt = "; ".join(
    " ".join(
      f"{m} {x:.2f}"
      for m, x in ratios({k: statistics.median(w for w, _ in v) for k, v in r.items()}).items()
    )
    for r in per_round
  )

  rows = [f"| {k} | {med[k] * 1e3:.0f} | {cpu[k] * 1e3:.0f} | {tps[k]:,.0f} |" for k in times]
  table = "\n".join(
    [
      "| framework / method | median step (ms) | CPU time per step (ms) | tokens/s |",
      "| --- | ---: | ---: | ---: |",
      *rows,
    ]
  )
  mem_table = "\n".join(
    [
      "| gemmax step | compiled memory (MiB, args + temp + outputs - aliased) |",
      "| --- | ---: |",
      *[f"| {k} | {v:,.0f} |" for k, v in mem.items()],
    ]
  )
  text = (
    f"# Train step: gemmax vs transformers + peft\n\n"
    f"Measured by `python benchmarks/train_step.py` on {platform.machine()} CPU with "
    f"{threads} cores ({time.strftime('%Y-%m-%d')}), jax {jax.__version__}, "
    f"torch {torch_version}, {args.rounds} interleaved rounds x {args.steps} steps; "
    f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end.\n"
    f"Config: Gemma 2 style, vocab 8192, hidden 512, MLP 2048, 8 layers, 8 heads / 4 kv, "
    f"head_dim 64, window 128, batch {B} x {T}, rank {RANK} on all linear layers, AdamW, "
    f"{args.dtype}. Threads: XLA default pool ({threads}), torch {threads} "
    f"(and 1 as a control). "
    f"glibc keeps freed host memory in gemmax's process (gemmax.host_memory): "
    f"{'yes' if HOST_MEMORY_KEPT else 'no'}; peft runs in a plain process of its own."
    f"\n\n{table}\n\nlora_vs_peft = {ratio['lora']:.2f}, "
    f"dora_vs_peft = {ratio['dora']:.2f} (against the faster peft thread setting; "
    f"per round: {rounds_txt})\n\n{mem_table}\n"
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)
  print(f"lora_vs_peft={ratio['lora']:.2f} dora_vs_peft={ratio['dora']:.2f}")


if __name__ == "__main__":
  sys.exit(main())

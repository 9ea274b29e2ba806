"""Compiled-program comparison between two checkouts of gemmax, for refactors that must not change
what XLA:CPU runs (and so cannot be slower), without timing anything on a busy machine.

  PYTHONPATH=<checkout A> python benchmarks/hlo_compare.py dump /tmp/hlo_a
  PYTHONPATH=<checkout B> python benchmarks/hlo_compare.py dump /tmp/hlo_b
  python benchmarks/hlo_compare.py compare /tmp/hlo_a /tmp/hlo_b

`dump` lowers and compiles, on tiny models: a LoRA train step (loss, forward and backward) in bf16
and float32, a full fine-tuning step in bf16, a cached generation (a prompt prefill, a second
prompt chunk against the cache, a one-token decode on the sampler's [out, in] copy) in bf16 and
float32, and the gradient of a 1024-token attention (query blocks on CPU) in bf16. It writes each
optimized HLO module and its op counts. `compare` prints the counts side by side and whether the
two programs are the same up to instruction names (sorted instructions, names and metadata cut).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

OPS = ("dot", "custom-call", "fusion", "transpose", "copy", "convert", "reduce", "while")


def _config(preset, dtype, **kw):
  from gemmax.models import ModelConfig

  return ModelConfig.preset(preset, dtype=dtype, param_dtype=dtype, **kw)


def _batch(b=2, t=64, vocab=256, packed=False):
  rng = np.random.RandomState(0)
  ids = rng.randint(0, vocab, (b, t + 1)).astype(np.int32)
  batch = dict(
    input_ids=jnp.asarray(ids[:, :-1]),
    targets=jnp.asarray(ids[:, 1:]),
    loss_mask=jnp.ones((b, t), jnp.float32),
  )
  if packed:
    batch["segment_ids"] = jnp.asarray(np.repeat([[1] * (t // 2) + [2] * (t // 2)], b, 0))
  return batch


def train_step(preset, dtype, lora=True, packed=False):
  from gemmax import peft
  from gemmax.models import Transformer
  from gemmax.train.losses import model_loss_sums

  model = Transformer(_config(preset, dtype), rngs=nnx.Rngs(0))
  if lora:
    peft.apply(model, method="lora", rank=4, alpha=8)
  trainable = peft.trainable_filter(model)
  graphdef, params, rest = nnx.split(model, trainable, ...)

  def loss(params, rest, batch):
    return model_loss_sums(nnx.merge(graphdef, params, rest), batch).loss_sum

  return jax.jit(jax.value_and_grad(loss)), (params, rest, _batch(packed=packed))


def generation(preset, dtype):
  from gemmax.models import Transformer
  from gemmax.models.kv_cache import init_cache
  from gemmax.sampling.layout import to_out_in

  model = Transformer(_config(preset, dtype), rngs=nnx.Rngs(0))
  graphdef, state = to_out_in(model)
  cache = init_cache(model.config, 2, 32)

  def run(state, cache, ids):
    m = nnx.merge(graphdef, state)
    seg = jnp.ones_like(ids)
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), ids.shape)
    _, cache = m.hidden_states(ids[:, :8], pos[:, :8], seg[:, :8], cache)  # fresh cache
    _, cache = m.hidden_states(ids[:, 8:12], pos[:, 8:12], seg[:, 8:12], cache)  # a second chunk
    h, cache = m.hidden_states(ids[:, 12:13], pos[:, 12:13], seg[:, 12:13], cache)  # decode
    return m.logits(h), cache

  return jax.jit(run), (state, cache, jnp.zeros((2, 16), jnp.int32))


def long_attention(dtype, t=1024):
  """impl "auto" on a prompt of 1024 tokens: the query blocks of gemmax.ops.qblocks on CPU."""
  from gemmax.ops import attention

  q, k, v = (jnp.ones((1, t, n, 16), dtype) for n in (4, 2, 2))

  def loss(q, k, v):
    out = attention(q, k, v, sliding_window=256, softcap=50.0)
    return out.astype(jnp.float32).sum()

  return jax.jit(jax.grad(loss, (0, 1, 2))), (q, k, v)


CASES = {
  "lora_bf16_gemma2": lambda: train_step("gemma2-tiny", "bfloat16"),
  "lora_f32_gemma2": lambda: train_step("gemma2-tiny", "float32"),
  "lora_bf16_llama_packed": lambda: train_step("llama3-tiny", "bfloat16", packed=True),
  "full_bf16_llama": lambda: train_step("llama3-tiny", "bfloat16", lora=False),
  "generate_bf16_gemma2": lambda: generation("gemma2-tiny", "bfloat16"),
  "generate_f32_llama": lambda: generation("llama3-tiny", "float32"),
  "attention_1k_bf16": lambda: long_attention(jnp.bfloat16),
}


def counts(hlo: str) -> dict:
  ops = re.findall(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][\w-]*)\(", hlo, re.M)
  c = collections.Counter(ops)
  return {op: c.get(op, 0) for op in OPS} | {"all": sum(c.values())}


def normalized(hlo: str) -> str:
  """The module's instructions without names, metadata and the source-location tables (file and
  function names), sorted: equal programs compare equal."""
  lines = []
  for line in hlo.splitlines():
    if re.match(r"\d+ |(FileNames|FunctionNames|FileLocations|StackFrames)$", line):
      continue
    line = re.sub(r", metadata=\{[^}]*\}", "", line)
    line = re.sub(r"%[\w.\-]+", "%x", line)
    line = re.sub(r"\b[\w.\-]+(?=: \w+\[)", "p", line)  # computation parameters
    lines.append(line.strip())
  return "\n".join(sorted(x for x in lines if x))


def dump(out: str):
  os.makedirs(out, exist_ok=True)
  summary = {}
  for name, build in CASES.items():
    fn, args = build()
    hlo = fn.lower(*args).compile().as_text()
    with open(os.path.join(out, f"{name}.hlo"), "w") as f:
      f.write(hlo)
    summary[name] = counts(hlo)
    print(name, summary[name], flush=True)
  with open(os.path.join(out, "counts.json"), "w") as f:
    json.dump(summary, f, indent=1)


def compare(a: str, b: str):
  ca, cb = (json.load(open(os.path.join(d, "counts.json"))) for d in (a, b))
  print("| case | " + " | ".join(OPS + ("all",)) + " | same program |")
  print("|---" * (len(OPS) + 3) + "|")
  for name in ca:
    cells = []
    for op in OPS + ("all",):
      x, y = ca[name][op], cb[name][op]
      cells.append(str(x) if x == y else f"{x} -> {y}")
    ta, tb = (normalized(open(os.path.join(d, f"{name}.hlo")).read()) for d in (a, b))
    print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if ta == tb else 'NO'} |")


if __name__ == "__main__":
  if sys.argv[1] == "dump":
    dump(sys.argv[2])
  else:
    compare(sys.argv[2], sys.argv[3])

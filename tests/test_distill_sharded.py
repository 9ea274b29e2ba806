"""A teacher sharded over 8 simulated devices gives the same top-k store and online loss."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
  import json, os, sys
  import jax, numpy as np, optax
  from flax import nnx
  from gemmax import data, distill, sharding
  from gemmax.models import ModelConfig, Transformer
  from gemmax.train import make_train_step, split_model
  assert jax.device_count() == 8
  out = sys.argv[1]
  tok = data.load_tokenizer(os.path.join(%(root)r, "checkpoints", "gemmax-tiny"))
  with open(os.path.join(out, "t.jsonl"), "w") as f:
    for t in ["It was a dark and stormy night.", "What is the capital of France?"] * 4:
      f.write(json.dumps({"text": t}) + "\\n")
  src = data.SourceSpec(os.path.join(out, "t.jsonl"), kind="text")
  cfg = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=8192)
  make = lambda: Transformer(cfg, rngs=nnx.Rngs(0))
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = sharding.shard_model(make(), mesh)
  assert len(sharded.embed_tokens.embedding[...].sharding.device_set) == 8
  kw = dict(k=8, seq_len=32, batch_size=4, progress=False, teacher_id="t")
  distill.write_teacher_store(make(), tok, src, os.path.join(out, "plain"), **kw)
  distill.write_teacher_store(sharded, tok, src, os.path.join(out, "sharded"), mesh=mesh, **kw)
  a = distill.TopKStore(os.path.join(out, "plain"))
  b = distill.TopKStore(os.path.join(out, "sharded"))
  for i in range(len(a)):
    x, y = a.example(i), b.example(i)
    np.testing.assert_array_equal(x["topk_ids"][:, 0], y["topk_ids"][:, 0])
    np.testing.assert_allclose(x["topk_probs"].astype(float), y["topk_probs"].astype(float),
                               atol=2e-3)
  # online: a sharded teacher inside the pair, the same loss and student update as unsharded
  batch = next(data.make_pipeline(src, tok, data.DataConfig(seq_len=32, batch_size=4, prefetch=0)))
  student_cfg = cfg.replace(num_hidden_layers=1, hidden_size=32)
  results = []
  for teacher, m in ((make(), None), (sharded, mesh)):
    pair = distill.TeacherStudent(Transformer(student_cfg, rngs=nnx.Rngs(1)), teacher)
    split = split_model(pair, distill.student_filter(pair))
    tx = optax.sgd(0.1)
    step = make_train_step(split.train_def, tx, donate=False, loss_fn=distill.distill_loss_fn(
        distill.DistillLoss(divergence="reverse_kl")))
    args = (split.params, tx.init(split.params), split.rest, batch, jax.random.key(0))
    if m is not None:
      with jax.set_mesh(m):
        results.append(step(*args))
    else:
      results.append(step(*args))
  (p0, _, m0), (p1, _, m1) = results
  np.testing.assert_allclose(float(m0["loss"]), float(m1["loss"]), rtol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), p0, p1)
  print("OK")
""")


@pytest.mark.slow
def test_sharded_teacher_matches_single_device(tmp_path):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  r = subprocess.run(
    [sys.executable, "-c", WORKER % {"root": ROOT}, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
    cwd=ROOT,
  )
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]

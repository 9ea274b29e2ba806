"""Subprocess body for the sharding tests: needs its own XLA_FLAGS device count before jax starts.

python tests/sharding_worker.py equiv [presets meshes] -> JSON: max diffs per mesh, bytes/device
python tests/sharding_worker.py train [addr nproc id]  -> JSON: losses of a few sharded steps
python tests/sharding_worker.py gguf FILE             -> JSON: sharded vs single-device load
"""

import json
import os
import sys

MODE = sys.argv[1]
NDEV = 4 if (MODE == "train" and len(sys.argv) > 2) else 8
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={NDEV}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from gemmax import sharding as S  # noqa: E402
from gemmax.models import ModelConfig, Transformer, create_sharded  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)]


def loss_fn(model, ids):
  logits = model(ids[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


@nnx.jit
def train_step(model, opt, ids):
  loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, opt.wrt))(model, ids)
  opt.update(model, grads)
  return loss


def lora_model(config):
  from gemmax import peft

  model = Transformer(config, rngs=nnx.Rngs(0))
  peft.apply(model, rank=4, alpha=8)
  from gemmax.peft.lora import LoRAParam

  # B starts at zero; make it random so the step moves A too and the logits depend on B.
  key = jax.random.key(1)
  for _, var in nnx.iter_graph(model):
    if isinstance(var, LoRAParam) and var.shape[0] == 4:
      key, sub = jax.random.split(key)
      var.set_value(0.02 * jax.random.normal(sub, var.shape))
  return model, LoRAParam


def run_lora(model, wrt, ids, mesh=None):
  """logits, loss, loss after one Adam step, updated adapter params (all as numpy)."""
  model = nnx.clone(model)
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=wrt)
  if mesh is not None:
    S.shard_model(model, mesh)
    S.shard_model(opt, mesh)
    ids = jax.device_put(ids, S.sharding_for_axes(("batch", "seq"), ids.shape, mesh))
  ctx = jax.set_mesh(mesh) if mesh is not None else _null()
  with ctx:
    logits = nnx.jit(lambda m, x: m(x))(model, ids)
    loss = train_step(model, opt, ids)
    loss2 = nnx.jit(loss_fn)(model, ids)
  adapters = {str(p): np.asarray(v[...]) for p, v in nnx.state(model, wrt).flat_state()}
  return np.asarray(logits), float(loss), float(loss2), adapters


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def equiv():
  out = {}
  ids = jax.random.randint(jax.random.key(2), (8, 17), 0, 256)
  names = sys.argv[2].split(",") if len(sys.argv) > 2 else ["gemma2-tiny", "llama3-tiny"]
  meshes = (
    [tuple(int(v) for v in m.split("x")) for m in sys.argv[3].split(",")]
    if len(sys.argv) > 3
    else MESHES
  )
  for name in names:
    config = ModelConfig.preset(name)
    model, wrt = lora_model(config)
    ref = run_lora(model, wrt, ids)
    for shape in meshes:
      got = run_lora(model, wrt, ids, S.make_mesh(*shape))
      out[f"{name} {shape}"] = {
        "logits": float(np.max(np.abs(got[0] - ref[0]))),
        "loss": abs(got[1] - ref[1]),
        "loss_after_step": abs(got[2] - ref[2]),
        "adapters": max(float(np.max(np.abs(got[3][k] - ref[3][k]))) for k in ref[3]),
        "loss_value": ref[1],
      }
  print("RESULT " + json.dumps({**out, **memory(print_=False)}))


def memory(print_=True):
  """Full-parameter Adam on an fsdp=8 mesh: bytes per device from the arrays' shards."""
  out = {}
  mesh = S.make_mesh(1, 8, 1)
  model = create_sharded(ModelConfig.preset("gemma2-tiny"), mesh, 0)
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  S.shard_model(opt, mesh)
  state = (nnx.state(model), nnx.state(opt))
  per_dev = S.per_device_bytes(state)
  total = sum(x.nbytes for x in jax.tree.leaves(state))
  out["memory"] = {"total": total, "max_per_device": max(per_dev.values()), "devices": len(per_dev)}
  if print_:
    print("RESULT " + json.dumps(out))
  return out


def io():
  """Save on an fsdp=8 mesh, restore onto (2, 2, 2): values equal, new shardings."""
  import tempfile
  from gemmax.models import abstract_model
  from gemmax.train import checkpoints

  config = ModelConfig.preset("llama3-tiny")
  model = create_sharded(config, S.make_mesh(1, 8, 1), 0)
  path = os.path.join(tempfile.mkdtemp(), "ckpt")
  checkpoints.save_sharded(path, model)
  back = checkpoints.restore_model(path, abstract_model(config), S.make_mesh(2, 2, 2))
  diff = max(
    float(np.max(np.abs(np.asarray(a[...]) - np.asarray(b[...]))))
    for (_, a), (_, b) in zip(nnx.state(model).flat_state(), nnx.state(back).flat_state())
  )
  print(
    "RESULT "
    + json.dumps(
      {"max_diff": diff, "spec": str(back.layers[0].mlp.up_proj.kernel[...].sharding.spec)}
    )
  )


def gguf():
  """A GGUF file loaded onto a (1, 4, 2) mesh: every tensor sharded as its axes say, values equal
  to the single-device load."""
  from gemmax.convert import load_gguf

  path = sys.argv[2]
  mesh = S.make_mesh(1, 4, 2)
  ref, got = load_gguf(path), load_gguf(path, mesh=mesh)
  diff = max(
    float(np.max(np.abs(np.asarray(a[...]) - np.asarray(b[...]))))
    for (_, a), (_, b) in zip(nnx.state(ref).flat_state(), nnx.state(got).flat_state())
  )
  k = got.layers[0].mlp.up_proj.kernel[...]
  print(
    "RESULT "
    + json.dumps(
      {"max_diff": diff, "spec": str(k.sharding.spec), "shards": len(k.addressable_shards)}
    )
  )


def train():
  if len(sys.argv) > 2:
    from gemmax import distributed

    distributed.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), timeout_s=60)
  mesh = S.make_mesh(data=2, fsdp=-1)
  config = ModelConfig.preset("llama3-tiny")
  model = create_sharded(config, mesh, 0)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  S.shard_model(opt, mesh)
  all_ids = np.asarray(jax.random.randint(jax.random.key(3), (3, 8, 17), 0, 256))
  sharding = S.sharding_for_axes(("batch", "seq"), (8, 17), mesh)
  n, i = jax.process_count(), jax.process_index()
  losses = []
  with jax.set_mesh(mesh):
    for step in range(3):
      rows = all_ids[step].reshape(n, 8 // n, 17)[i]  # this process's rows only
      ids = jax.make_array_from_process_local_data(sharding, rows, (8, 17))
      losses.append(float(train_step(model, opt, ids)))
  print("RESULT " + json.dumps({"losses": losses, "processes": n, "devices": jax.device_count()}))
  if n > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  {"equiv": equiv, "train": train, "io": io, "memory": memory, "gguf": gguf}[MODE]()

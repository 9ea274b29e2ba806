"""gemmax.sharding: rules and errors in-process; 8 simulated devices in a subprocess."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from gemmax import sharding as S

WORKER = os.path.join(os.path.dirname(__file__), "sharding_worker.py")
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def run_worker(*args, timeout=400):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, WORKER, *args], capture_output=True, text=True, timeout=timeout, env=env
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[-1][len("RESULT ") :])


def test_rules_map_logical_axes():
  assert S.partition_spec(("embed", "mlp"), (64, 128), MESH) == P("fsdp", "tensor")
  assert S.partition_spec(("vocab", "embed"), (256, 64), MESH) == P("tensor", "fsdp")
  assert S.partition_spec(("norm",), (64,), MESH) == P(None)
  assert S.partition_spec(None, (3,), MESH) == P()
  # LoRA B (None, out_axis); a mesh axis of size 1 is dropped; each mesh axis used once.
  assert S.partition_spec((None, "mlp"), (4, 128), MESH) == P(None, "tensor")
  assert S.partition_spec(("embed", "mlp"), (64, 128), {"data": 8, "fsdp": 1, "tensor": 1}) == P(
    None, None
  )
  assert S.partition_spec(("batch", "seq", "embed"), (8, 5, 64), MESH, S.ACTIVATION_RULES) == P(
    ("data", "fsdp"), None, None
  )


def test_indivisible_dim_is_a_clear_error():
  with pytest.raises(ValueError, match=r"w\.kernel: dim 0 \('embed', size 63\) is not divisible"):
    S.partition_spec(("embed", "mlp"), (63, 128), MESH, name="w.kernel")
  assert S.partition_spec(("embed", "mlp"), (63, 128), MESH, lenient=True) == P(None, "tensor")
  with pytest.raises(ValueError, match="no sharding rule"):
    S.partition_spec(("heads",), (8,), MESH)


def test_make_mesh_errors_name_shape_and_devices():
  with pytest.raises(
    ValueError,
    match=r"mesh \(data=3, fsdp=1, tensor=1\) needs 3 devices, "
    r"but there are 1",
  ):
    S.make_mesh(3, 1, 1)
  mesh = S.make_mesh()
  assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape)["data"] == 1


def test_constrain_is_noop_without_mesh():
  x = jnp.ones((2, 3, 4))
  assert S.constrain(x, S.HIDDEN) is x


def test_fsdp8_params_and_adam_state_per_device():
  mem = run_worker("memory")["memory"]
  assert mem["devices"] == 8 and mem["max_per_device"] <= 1.15 * mem["total"] / 8, mem


def test_orbax_restore_onto_another_mesh():
  out = run_worker("io")
  assert out["max_diff"] == 0.0 and out["spec"] == "P('fsdp', 'tensor')", out


@pytest.mark.slow
def test_sharded_matches_single_device_all_meshes():
  out = run_worker("equiv", "gemma2-tiny", "8x1x1,1x8x1,1x4x2,2x2x2", timeout=500)
  assert len(out) == 5
  for key, d in out.items():
    if key != "memory":
      assert max(d["logits"], d["loss"], d["loss_after_step"], d["adapters"]) <= 1e-5, (key, d)

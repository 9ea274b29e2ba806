"""LoRA/DoRA semantics on gemmax models alone: init, targets, dropout, gradients, merge, I/O."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gemmax.peft as gp
from gemmax.models import ModelConfig, Transformer
from gemmax.models.layers import Linear

IDS = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 10)))


def tiny(name="llama3-tiny", **kw):
  return Transformer(ModelConfig.preset(name, **kw), rngs=nnx.Rngs(0))


def adapters(model):
  return [(n, m) for n, m in nnx.iter_graph(model) if isinstance(m, gp.LoRALinear)]


def randomize(model, seed=0):
  key = jax.random.key(seed)
  for _, m in adapters(model):
    key, ka, kb = jax.random.split(key, 3)
    m.lora_a.set_value(jax.random.normal(ka, m.lora_a.shape) * 0.3)
    m.lora_b.set_value(jax.random.normal(kb, m.lora_b.shape) * 0.3)
  return model


def test_init_matches_peft_defaults():
  model = gp.apply(tiny(param_dtype="bfloat16"), rank=16, alpha=32)
  q = model.layers[0].mlp.down_proj  # in_features = 128
  a = np.asarray(q.lora_a[...])
  bound = 1 / math.sqrt(128)  # kaiming_uniform(a=sqrt(5)) on [r, in]: gain sqrt(1/3) * sqrt(3/in)
  assert a.shape == (128, 16) and np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
  assert np.all(np.asarray(q.lora_b[...]) == 0) and q.scaling == 2.0
  assert q.lora_a.dtype == jnp.float32 and q.lora_b.dtype == jnp.float32  # bf16 base
  assert q.base.kernel.dtype == jnp.bfloat16 and not isinstance(q.base.kernel, gp.LoRAParam)
  assert q.lora_a.get_metadata()["axes"] == ("mlp", None)
  assert q.lora_b.get_metadata()["axes"] == (None, "embed")
  assert gp.LoRALinear(q.base, rank=16, alpha=32, rslora=True, rngs=nnx.Rngs(0)).scaling == 8.0
  x = jax.random.normal(jax.random.key(0), (3, 128))
  np.testing.assert_allclose(q(x), q.base(x), atol=1e-6)  # B = 0: adapter starts as a no-op


def test_targets():
  names = lambda m: sorted(n for n, _ in adapters(m))
  m = gp.apply(tiny(), targets="all-linear")
  assert len(adapters(m)) == 14 and isinstance(m.lm_head, Linear)  # lm_head excluded
  assert names(gp.apply(tiny(), targets=["q_proj", "v_proj"])) == [
    ("layers", i, "self_attn", p) for i in (0, 1) for p in ("q_proj", "v_proj")
  ]
  assert len(adapters(gp.apply(tiny(), targets=r".*layers\.1\.mlp\..*"))) == 3
  assert len(adapters(gp.apply(tiny(), targets=r"model\.layers\.0\.self_attn\.o_proj"))) == 1
  assert isinstance(gp.apply(tiny(), targets=["lm_head"], rank=4).lm_head, gp.LoRALinear)


def test_errors():
  with pytest.raises(ValueError, match="exceeds min"):
    gp.apply(tiny(), rank=65)
  with pytest.raises(ValueError, match="match no linear layer"):
    gp.apply(tiny(), targets=["qkv_proj"])
  with pytest.raises(ValueError, match="method"):
    gp.apply(tiny(), method="ia3")
  with pytest.raises(ValueError, match="already has adapters"):
    gp.apply(gp.apply(tiny()))


def test_dora_magnitude_is_column_norm():
  base = tiny()
  w = np.asarray(base.layers[1].self_attn.k_proj.kernel[...])  # [in, out]
  m = gp.apply(base, method="dora", targets=["k_proj"]).layers[1].self_attn.k_proj
  np.testing.assert_allclose(m.magnitude[...], np.linalg.norm(w, axis=0), rtol=1e-6)
  assert m.magnitude.get_metadata()["axes"] == ("kv_heads",)


@pytest.mark.parametrize(
  "method,quantize", [("lora", None), ("dora", None), ("lora", "nf4"), ("dora", "nf4")]
)
def test_merge_equals_unmerged(method, quantize):
  model = randomize(gp.apply(tiny(), method=method, rank=4, quantize=quantize))
  if method == "dora":
    for _, m in adapters(model):
      m.magnitude.set_value(m.magnitude[...] * 1.3)
  before = model(IDS)
  gp.merge(model)
  assert not adapters(model) and isinstance(model.layers[0].mlp.up_proj, Linear)
  np.testing.assert_allclose(model(IDS), before, atol=1e-4, rtol=1e-4)


def test_dropout_only_on_adapter_branch():
  lin = Linear(
    8, 8, axes=("embed", "mlp"), dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  m = gp.LoRALinear(lin, rank=8, alpha=8, dropout=0.5, rngs=nnx.Rngs(1))
  m.lora_a.set_value(jnp.eye(8))
  m.lora_b.set_value(jnp.eye(8))  # adapter branch = dropout(x) exactly
  x = jax.random.normal(jax.random.key(0), (64, 8)) + 3.0
  branch = np.asarray(m(x) - lin(x))
  xs = np.asarray(x)
  kept = np.isclose(branch, xs / 0.5, rtol=1e-5)
  dropped = np.abs(branch) < 1e-5
  assert np.all(kept | dropped) and 0.3 < dropped.mean() < 0.7
  assert not np.allclose(m(x), m(x))  # a fresh mask each call
  m.eval()
  np.testing.assert_allclose(m(x) - lin(x), xs, rtol=1e-5)  # eval: no dropout


def test_gradients_only_reach_lora_params():
  model = randomize(gp.apply(tiny(), method="dora", rank=4))
  filt = gp.trainable_filter(model)
  assert filt is gp.LoRAParam and gp.trainable_filter(tiny()) is nnx.Param
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(IDS) ** 2), argnums=nnx.DiffState(0, filt)))(model)
  leaves = jax.tree.leaves(grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert leaves and all(isinstance(v, gp.LoRAParam) for v in leaves)
  assert len(leaves) == 14 * 3 and all(float(jnp.abs(v[...]).max()) > 0 for v in leaves)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_shared_input_adapters_take_one_down_projection(method, monkeypatch):
  """q/k/v and gate/up share their input: their down-projections are one product, and the
  logits and gradients are those of adapters applied one by one."""
  model = randomize(gp.apply(tiny(), method=method, rank=4))
  graphdef, params, rest = nnx.split(model, gp.trainable_filter(model), ...)
  loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(IDS) ** 2)

  def run():
    dots = str(jax.make_jaxpr(jax.grad(loss))(params)).count("dot_general")
    return loss(params), jax.tree.leaves(jax.grad(loss)(params)), dots

  shared, per_module = run(), None
  monkeypatch.setattr(gp.LoRALinear, "shared_input", None)  # project_shared: one by one
  per_module = run()
  np.testing.assert_allclose(shared[0], per_module[0], rtol=1e-6)
  for a, b in zip(shared[1], per_module[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # per layer 5 adapters -> 2 groups: 3 fewer products each in the forward, the input gradient
  # and A's gradient
  assert shared[2] == per_module[2] - 3 * 3 * len(model.layers), (shared[2], per_module[2])


def test_adapter_save_load_and_base_check(tmp_path):
  model = randomize(gp.apply(tiny(), method="dora", rank=4, targets=["q_proj", "down_proj"]))
  gp.save_adapter(model, str(tmp_path / "a"))
  gp.save_adapter(model, str(tmp_path / "a"))  # overwrite in place
  cfg = json.load(open(tmp_path / "a" / "adapter_config.json"))
  assert cfg["target_modules"] == ["down_proj", "q_proj"] and cfg["r"] == 4
  fresh = gp.load_adapter(tiny(), str(tmp_path / "a"))
  np.testing.assert_allclose(fresh(IDS), model(IDS), atol=1e-6)
  other = Transformer(ModelConfig.preset("llama3-tiny", hidden_size=128), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="different base model.*hidden_size 64 vs 128"):
    gp.load_adapter(other, str(tmp_path / "a"))
  with pytest.raises(ValueError, match="no adapters"):
    gp.save_adapter(tiny(), str(tmp_path / "b"))


def _bent_adapter(tmp_path, name, cfg_edit=None, tensor_edit=None):
  """A saved DoRA adapter with its config or one tensor edited."""
  import shutil

  from gemmax.io.safetensors import SafetensorsFile, save_file

  src = tmp_path / "good"
  if not src.exists():
    gp.save_adapter(
      randomize(gp.apply(tiny(), method="dora", rank=4, targets=["q_proj"])), str(src)
    )
  d = tmp_path / name
  shutil.copytree(src, d)
  if cfg_edit is not None:
    p = d / "adapter_config.json"
    p.write_text(json.dumps(cfg_edit(json.loads(p.read_text()))))
  if tensor_edit is not None:
    st = SafetensorsFile(str(d / "adapter_model.safetensors"))
    tensors = {k: st.get(k) for k in st.keys()}
    tensor_edit(tensors)
    save_file(tensors, str(d / "adapter_model.safetensors"))
  return str(d)


def _nan_first_b(t):
  key = sorted(k for k in t if "lora_B" in k)[-1]
  t[key] = t[key].copy()
  t[key][0, 0] = np.nan


@pytest.mark.parametrize(
  "name,cfg_edit,tensor_edit,needle",
  [
    ("no_r", lambda c: {k: v for k, v in c.items() if k != "r"}, None, "r (the LoRA rank)"),
    ("r_zero", lambda c: {**c, "r": 0}, None, "r (the LoRA rank)"),
    ("r_string", lambda c: {**c, "r": "4"}, None, "r (the LoRA rank)"),
    ("alpha_nan", lambda c: {**c, "lora_alpha": float("nan")}, None, "lora_alpha"),
    ("dropout_one", lambda c: {**c, "lora_dropout": 1.0}, None, "lora_dropout"),
    ("dora_string", lambda c: {**c, "use_dora": "yes"}, None, "use_dora"),
    ("a_list", lambda c: [c], None, "not an object"),
    ("nan_weight", None, _nan_first_b, "non-finite"),
  ],
)
def test_bad_adapter_files_are_refused_leaving_the_model_as_it_was(
  tmp_path, name, cfg_edit, tensor_edit, needle
):
  d = _bent_adapter(tmp_path, name, cfg_edit, tensor_edit)
  model = gp.apply(tiny(), method="dora", rank=4, targets=["q_proj"])
  before = jax.tree.map(np.asarray, nnx.state(model))
  with pytest.raises(ValueError, match=re.escape(needle)) as e:
    gp.load_adapter(model, d)
  assert d in str(e.value) and "\n" not in str(e.value)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model)))

"""LoRA/DoRA against HF peft on tiny random HF models: adapters both ways, logits and gradients."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

peft = pytest.importorskip("peft")

import gemmax.peft as gp  # noqa: E402
from gemmax.convert import load_hf  # noqa: E402
from hf_models import gemma2_config, llama_config, make_hf_model, make_peft_model, save_hf_model  # noqa: E402

IDS = np.random.default_rng(0).integers(0, 256, size=(2, 12))


SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
  """family -> (HF torch model, its checkpoint dir), built once per module."""
  cache = {}

  def get(family):
    if family not in cache:
      cfg = llama_config() if family == "llama" else gemma2_config(num_hidden_layers=2)
      hf = make_hf_model(cfg, seed=1)
      path = str(tmp_path_factory.mktemp(family))
      save_hf_model(hf, path)
      cache[family] = (hf, path)
    return cache[family]

  return get


def hf_logits(model):
  with torch.no_grad():
    return model(torch.tensor(IDS)).logits.float().numpy()


def randomize(model, seed=0):
  """Non-zero A, B (and a perturbed DoRA magnitude) on every gemmax adapter."""
  key = jax.random.key(seed)
  for _, m in nnx.iter_graph(model):
    if isinstance(m, gp.LoRALinear):
      key, ka, kb, km = jax.random.split(key, 4)
      m.lora_a.set_value(jax.random.normal(ka, m.lora_a.shape) * 0.2)
      m.lora_b.set_value(jax.random.normal(kb, m.lora_b.shape) * 0.2)
      if m.use_dora:
        m.magnitude.set_value(
          m.magnitude[...] * jax.random.uniform(km, m.magnitude.shape, minval=0.5, maxval=1.5)
        )
  return model


@pytest.mark.parametrize(
  "family,method,targets,rslora",
  [
    ("llama", "lora", "all-linear", False),
    ("llama", "dora", ["q_proj", "v_proj", "down_proj"], False),
    ("llama", "lora", r".*layers\.1\..*_proj", True),
    ("gemma2", "lora", "all-linear", False),
    pytest.param("gemma2", "dora", ["q_proj", "v_proj", "down_proj"], False, marks=SLOW),
    pytest.param("gemma2", "lora", r".*layers\.1\..*_proj", True, marks=SLOW),
  ],
)
def test_gemmax_adapter_loads_in_peft(bases, tmp_path, family, method, targets, rslora):
  hf, path = bases(family)
  model = load_hf(path)
  gp.apply(model, method=method, rank=4, alpha=8, targets=targets, rslora=rslora)
  randomize(model)
  ours = np.asarray(model(jnp.asarray(IDS)))
  gp.save_adapter(model, str(tmp_path / "adapter"), base_model_name_or_path=path)
  cfg = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
  assert cfg["peft_type"] == "LORA" and cfg["use_dora"] == (method == "dora")
  pm = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "adapter")).eval()
  ref = hf_logits(pm)
  assert np.abs(ref - hf_logits(hf)).max() > 1e-2  # the adapter changes the output
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
  "family,dora,rslora",
  [
    ("llama", False, False),
    ("llama", True, False),
    ("llama", False, True),
    ("llama", True, True),
    ("gemma2", True, False),
    pytest.param("gemma2", False, True, marks=SLOW),
  ],
)
def test_peft_adapter_loads_here(bases, tmp_path, family, dora, rslora):
  hf, path = bases(family)
  pm = make_peft_model(hf, dora=dora, rslora=rslora)
  pm.save_pretrained(str(tmp_path / "peft"))
  model = gp.load_adapter(load_hf(path), str(tmp_path / "peft"))
  q = model.layers[0].self_attn.q_proj
  assert isinstance(q, gp.LoRALinear) and q.use_dora == dora and q.rslora == rslora
  assert np.abs(hf_logits(pm) - hf_logits(hf)).max() > 1e-2  # the adapter changes the output
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(IDS))), hf_logits(pm), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", pytest.param("gemma2", marks=SLOW)])
def test_dora_gradients_match_peft(bases, tmp_path, family):
  """Same loss, same adapter: gradients of A, B and the magnitude agree with peft's (the
  weight norm is detached in both)."""
  hf, path = bases(family)
  model = randomize(
    gp.apply(load_hf(path), method="dora", rank=4, alpha=8, targets=["q_proj", "up_proj"]), seed=5
  )
  gp.save_adapter(model, str(tmp_path / "a"))
  pm = peft.PeftModel.from_pretrained(
    copy.deepcopy(hf), str(tmp_path / "a"), is_trainable=True
  ).eval()
  w = np.random.default_rng(1).standard_normal((2, 12, 256)).astype(np.float32)
  (pm(torch.tensor(IDS)).logits * torch.tensor(w)).sum().backward()
  torch_grads = {n: p.grad.numpy() for n, p in pm.named_parameters() if p.grad is not None}

  def loss(m):
    return jnp.sum(m(jnp.asarray(IDS)) * w)

  grads = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, gp.trainable_filter(model))))(model)
  layer = grads["layers"][0]["mlp"]["up_proj"]
  pre = "base_model.model.model.layers.0.mlp.up_proj."
  np.testing.assert_allclose(
    np.asarray(layer["lora_a"][...]).T,
    torch_grads[pre + "lora_A.default.weight"],
    rtol=1e-3,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(layer["lora_b"][...]).T,
    torch_grads[pre + "lora_B.default.weight"],
    rtol=1e-3,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(layer["magnitude"][...]),
    torch_grads[pre + "lora_magnitude_vector.default.weight"],
    rtol=1e-3,
    atol=1e-5,
  )


@pytest.mark.parametrize("method", ["dora", pytest.param("lora", marks=SLOW)])
def test_nf4_base_adapter_round_trip(bases, tmp_path, method):
  """QLoRA/QDoRA: an adapter trained on an NF4 base saves and loads into another NF4 model."""
  _, path = bases("llama")
  a = randomize(gp.apply(load_hf(path), method=method, rank=4, quantize="nf4"))
  gp.save_adapter(a, str(tmp_path / method))
  b = gp.apply(load_hf(path), method=method, rank=4, quantize="nf4", rngs=nnx.Rngs(7))
  gp.load_adapter(b, str(tmp_path / method))
  np.testing.assert_allclose(b(jnp.asarray(IDS)), a(jnp.asarray(IDS)), atol=1e-5)
  assert json.load(open(os.path.join(tmp_path / method, "adapter_config.json")))["gemmax"][
    "quantized_base"
  ]

"""Gemma 3 text models: presets, config.json parsing, the multimodal checkpoint's text tower,
greedy generation across the window, and peft adapters — against HF transformers."""

import copy
import json
import os

import numpy as np
import peft
import pytest
import torch
import transformers

import jax.numpy as jnp

import gemmax.peft as gp
from gemmax.convert import load_hf, save_hf
from gemmax.io.safetensors import SafetensorsFile, save_lazy
from gemmax.models import PUBLISHED_PARAMS, ModelConfig, param_count
from gemmax.sampling import Sampler
from hf_models import gemma3_config, make_hf_model, make_peft_model, save_hf_model

# Published totals of the multimodal 4B / 12B / 27B checkpoints (safetensors metadata); their
# text tower is the total less the SigLIP vision tower and the projector.
MULTIMODAL_TOTALS = {
  "gemma3-4b": 4_300_079_472,
  "gemma3-12b": 12_187_325_040,
  "gemma3-27b": 27_432_406_640,
}


def _siglip_params() -> int:
  vc = transformers.SiglipVisionConfig(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
  )
  with torch.device("meta"):
    return sum(p.numel() for p in transformers.SiglipVisionModel(vc).parameters())


@pytest.mark.parametrize("name", ["gemma3-270m", "gemma3-1b"])
def test_text_only_param_counts(name):
  assert param_count(ModelConfig.preset(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", list(MULTIMODAL_TOTALS))
def test_text_tower_param_counts(name):
  cfg = ModelConfig.preset(name)
  projector = 1152 * cfg.hidden_size + 1152  # mm_input_projection_weight + mm_soft_emb_norm
  assert param_count(cfg) + _siglip_params() + projector == MULTIMODAL_TOTALS[name]


def test_presets_follow_published_configs():
  c = ModelConfig.preset("gemma3-27b")
  assert c.query_scale == 168**-0.5 and c.head_dim == 128
  assert c.attn_logit_softcapping is None and c.final_logit_softcapping is None
  assert (c.qk_norm, c.post_norms, c.norm_offset, c.scale_embeddings) == (True,) * 4
  types = [c.layer_type(i) for i in range(12)]
  assert types == (["sliding_attention"] * 5 + ["full_attention"]) * 2
  assert c.layer_window(0) == 1024 and c.layer_window(5) is None
  assert c.layer_rope(0) == (10_000.0, None)
  theta, scaling = c.layer_rope(5)
  assert theta == 1e6 and scaling.rope_type == "linear" and scaling.factor == 8
  small = ModelConfig.preset("gemma3-270m")
  assert small.sliding_window == 512 and small.rope_scaling is None
  assert small.vocab_size == 262_144 and small.layer_rope(5) == (1e6, None)


def test_hub_multimodal_config_json_resolves_to_the_4b_text_preset():
  """google/gemma-3-4b-it's config.json names only what differs from Gemma3TextConfig."""
  hub = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "text_config": {
      "hidden_size": 2560,
      "intermediate_size": 10240,
      "model_type": "gemma3_text",
      "num_hidden_layers": 34,
      "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
      "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {"model_type": "siglip_vision_model"},
  }
  got = ModelConfig.from_hf(hub)
  want = ModelConfig.preset("gemma3-4b", param_dtype="bfloat16")
  assert got.replace(eos_token_id=want.eos_token_id) == want


def _ids(seq, batch=2, seed=0):
  return np.random.RandomState(seed).randint(3, 256, (batch, seq))


def _logits(hf, ids):
  with torch.no_grad():
    return hf(torch.tensor(ids)).logits.float().numpy()


def _rel(a, b):
  return np.abs(a - b).max() / max(1.0, np.abs(b).max())


def _tiny_multimodal(seed=0):
  vc = transformers.SiglipVisionConfig(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    vision_use_head=False,
  )
  cfg = transformers.Gemma3Config(
    text_config=gemma3_config(vocab_size=300).to_dict(),
    vision_config=vc.to_dict(),
    mm_tokens_per_image=4,
    image_token_index=299,
    boi_token_index=297,
    eoi_token_index=298,
  )
  torch.manual_seed(seed)
  hf = transformers.Gemma3ForConditionalGeneration(cfg).float().eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return hf


@pytest.mark.parametrize("layout", ["hub", "module-paths"])
def test_multimodal_checkpoint_text_tower(tmp_path, layout):
  """The text tower of a Gemma3ForConditionalGeneration checkpoint loads under either prefix
  (the Hub's `language_model.model.*`, which transformers 5 writes too, and the module paths
  `model.language_model.*` that transformers 4.5x wrote); its logits on text equal the
  multimodal model's."""
  hf = _tiny_multimodal()
  path = str(tmp_path / "mm")
  hf.save_pretrained(path, safe_serialization=True)
  names = SafetensorsFile(os.path.join(path, "model.safetensors")).keys()
  assert any(n.startswith("language_model.model.") for n in names)
  if layout == "module-paths":  # rewrite the file with the other names
    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    specs = []
    for n in st.keys():
      new = n.replace("language_model.model.", "model.language_model.")
      a = st.get(n)
      specs.append((new, a.shape, a.dtype, lambda a=a: a))
    os.remove(os.path.join(path, "model.safetensors"))
    save_lazy(specs, os.path.join(path, "model.safetensors"))
  model = load_hf(path, dtype="float32")
  assert model.config.family == "gemma3" and model.config.vocab_size == 300
  ids = _ids(20)
  err = _rel(np.asarray(model(jnp.asarray(ids))), _logits(hf, ids))
  assert err <= 1e-4, err


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
  hf = make_hf_model(gemma3_config(eos_token_id=255), seed=1)
  path = save_hf_model(hf, str(tmp_path_factory.mktemp("gemma3")))
  return hf, path


def _hf_greedy(model, prompt, n):
  out = model.generate(
    torch.tensor([prompt]),
    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    max_new_tokens=n,
    do_sample=False,
    pad_token_id=0,
  )
  return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("prompt_len,new", [(5, 24), (19, 12)])
def test_greedy_generation_across_the_window_matches_hf(gemma3, prompt_len, new):
  """Window 8: a short prompt decodes past it (the ring wraps); a long one is prefilled past it."""
  hf, path = gemma3
  prompt = [2] + list(np.random.RandomState(prompt_len).randint(3, 250, size=prompt_len - 1))
  want = _hf_greedy(hf, prompt, new)
  got = Sampler(load_hf(path), max_len=64).generate(prompt, new)
  assert got.tokens[0] == want


def test_save_hf_writes_gemma3_for_causal_lm(gemma3, tmp_path):
  hf, path = gemma3
  save_hf(load_hf(path), str(tmp_path / "rt"))
  cfg = json.load(open(tmp_path / "rt" / "config.json"))
  assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["model_type"] == "gemma3_text"
  hf2 = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path / "rt"), attn_implementation="eager"
  )
  hf2 = hf2.float().eval()
  assert type(hf2).__name__ == "Gemma3ForCausalLM"
  ids = _ids(20, seed=5)
  np.testing.assert_array_equal(_logits(hf2, ids), _logits(hf, ids))


@pytest.mark.parametrize("dora", [False, True])
def test_peft_adapters_both_ways(gemma3, tmp_path, dora):
  """A peft-made LoRA / DoRA adapter loads here with peft's logits, and ours loads in peft."""
  hf, path = gemma3
  pm = make_peft_model(hf, dora=dora)
  pm.save_pretrained(str(tmp_path / "peft"))
  ids = _ids(12)
  ref = _logits(pm, ids)
  assert np.abs(ref - _logits(hf, ids)).max() > 1e-2  # the adapter changes the output
  model = gp.load_adapter(load_hf(path), str(tmp_path / "peft"))
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=1e-4, rtol=0)
  # and back: saved here, loaded by peft onto the same base
  gp.save_adapter(model, str(tmp_path / "ours"), base_model_name_or_path=path)
  back = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "ours")).eval()
  np.testing.assert_allclose(_logits(back, ids), ref, atol=1e-4, rtol=0)


def test_export_into_the_multimodal_checkpoint(tmp_path):
  """A text tower loaded from a Gemma3ForConditionalGeneration checkpoint, changed (a LoRA
  adapter merged in), goes back into that checkpoint's layout: transformers' multimodal class
  loads it, its text logits equal ours, and the vision tower is the original byte for byte."""
  import jax
  from flax import nnx

  from gemmax.errors import GemmaxError
  from gemmax.models import Transformer

  hf = _tiny_multimodal(seed=2)
  src = str(tmp_path / "mm")
  hf.save_pretrained(src, safe_serialization=True)
  model = gp.apply(load_hf(src, dtype="float32"), "lora", rank=2, alpha=4)
  for _, m in nnx.iter_graph(model):
    if isinstance(m, gp.LoRALinear):
      m.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(3), m.lora_b.shape)
  merged = gp.merge(model)
  out = str(tmp_path / "out")
  save_hf(merged, out, multimodal=src)
  back = transformers.Gemma3ForConditionalGeneration.from_pretrained(out).float().eval()
  ids = _ids(20)
  err = _rel(np.asarray(merged(jnp.asarray(ids))), _logits(back, ids))
  assert err <= 1e-4, err
  assert _rel(_logits(back, ids), _logits(hf, ids)) > 1e-3  # the tower really changed
  theirs = dict(hf.named_parameters())
  for name, p in back.named_parameters():
    if "vision" in name or "projector" in name:
      assert torch.equal(p, theirs[name]), name
  with pytest.raises(GemmaxError, match="text tower does not match"):
    other = Transformer(ModelConfig.preset("gemma3-tiny"), rngs=nnx.Rngs(0))
    save_hf(other, str(tmp_path / "bad"), multimodal=src)
  assert not os.path.exists(tmp_path / "bad")

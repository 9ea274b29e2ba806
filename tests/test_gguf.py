"""GGUF in: tiny files in every type gguf can write, checked against transformers' own GGUF
loader; the one `load(source)` entry point; corrupt and unsupported files."""

import os
import shutil

import gguf
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from gemmax.convert import load, load_gguf, load_hf
from gemmax.errors import GemmaxError, MissingTensorError
from gguf_files import QUANTIZABLE, rewrite_gguf, write_gguf
from hf_models import gemma2_config, gemma3_config, llama_config, make_hf_model, save_hf_model

_forward = nnx.jit(lambda model, ids: model(ids))
IDS = np.random.RandomState(0).randint(0, 300, (2, 21))  # longer than the Gemma window (8)
# Odd shapes whose rows are whole quantization blocks (32): head_dim != hidden / heads, GQA 2:1,
# a vocabulary that is no power of two.
SHAPE = dict(
  vocab_size=300,
  hidden_size=64,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=24,
  intermediate_size=160,
)
# transformers' Gemma 2 GGUF loader keeps its config defaults for what llama.cpp derives or
# stores (query_pre_attn_scalar = head_dim here, the soft-caps): pass llama.cpp's values.
GEMMA_KW = dict(query_pre_attn_scalar=24, attn_logit_softcapping=20.0, final_logit_softcapping=15.0)
# Gemma 3 (seven layers: five sliding, one global, one sliding): llama.cpp keeps the global RoPE
# base, derives the local one (10,000) and the scalar; transformers' loader takes its defaults.
GEMMA3_KW = dict(
  query_pre_attn_scalar=24,
  rope_parameters={
    "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
  },
)
LOADER_KW = {"llama": {}, "gemma2": GEMMA_KW, "gemma3": dict(query_pre_attn_scalar=24)}


@pytest.fixture(scope="module")
def hf_models():
  return {
    "llama": make_hf_model(llama_config(**SHAPE)),
    "gemma2": make_hf_model(gemma2_config(**SHAPE, **GEMMA_KW)),
    "gemma3": make_hf_model(gemma3_config(**SHAPE, **GEMMA3_KW)),
  }


def _transformers_logits(path, **kw):
  ref = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path),
    gguf_file=os.path.basename(path),
    dtype=torch.float32,
    attn_implementation="eager",
    **kw,
  )
  with torch.no_grad():
    return ref(torch.tensor(IDS)).logits.numpy()


def _rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
@pytest.mark.parametrize("qtype", QUANTIZABLE)
def test_logits_equal_transformers_gguf_loader(tmp_path, hf_models, arch, qtype):
  path = write_gguf(hf_models[arch], str(tmp_path / f"{arch}-{qtype}.gguf"), qtype)
  want = _transformers_logits(path, **LOADER_KW[arch])
  model = load_gguf(path)
  assert model.config.family == arch and model.config.head_dim == 24
  assert _rel(np.asarray(_forward(model, IDS)), want) <= 1e-4


def test_llama3_rope_scaling_comes_back_from_rope_freqs(tmp_path):
  """llama.cpp stores llama3 RoPE scaling only as a `rope_freqs` tensor; transformers' GGUF
  loader drops it, so the reference here is the original model."""
  rope = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
    rope_theta=500000.0,
  )
  hf = make_hf_model(llama_config(**SHAPE, rope_parameters=rope, max_position_embeddings=512))
  model = load_gguf(write_gguf(hf, str(tmp_path / "l31.gguf"), "F32"))
  assert model.config.rope_scaling.rope_type == "llama3" and model.config.rope_scaling.factor == 8
  with torch.no_grad():
    want = hf(torch.tensor(IDS)).logits.numpy()
  assert _rel(np.asarray(_forward(model, IDS)), want) <= 1e-5


def test_load_takes_a_file_a_directory_or_an_hf_checkpoint(tmp_path, hf_models):
  hf = hf_models["llama"]
  (tmp_path / "g").mkdir()
  path = write_gguf(hf, str(tmp_path / "g" / "m.gguf"), "F32")
  want = np.asarray(_forward(load_gguf(path), IDS))
  for source in (path, str(tmp_path / "g")):
    assert np.array_equal(np.asarray(_forward(load(source), IDS)), want)
  save_hf_model(hf, str(tmp_path / "hf"))
  assert (
    _rel(
      np.asarray(_forward(load(str(tmp_path / "hf")), IDS)),
      np.asarray(_forward(load_hf(str(tmp_path / "hf")), IDS)),
    )
    == 0
  )
  shutil.copy(path, tmp_path / "g" / "second.gguf")
  with pytest.raises(GemmaxError, match="one .gguf"):
    load(str(tmp_path / "g"))
  (tmp_path / "x.bin").write_bytes(b"PK\x03\x04 not a model")
  with pytest.raises(GemmaxError, match="not a GGUF file"):
    load(str(tmp_path / "x.bin"))
  with pytest.raises(FileNotFoundError, match="registry names"):
    load("smollm-135m")


def test_bfloat16_storage_and_compute(hf_models, tmp_path):
  path = write_gguf(hf_models["llama"], str(tmp_path / "m.gguf"), "Q8_0")
  model = load_gguf(path, "bfloat16")
  assert model.layers[0].mlp.up_proj.kernel[...].dtype == np.dtype("bfloat16")
  assert model.config.dtype == "bfloat16"
  f32 = np.asarray(_forward(load_gguf(path), IDS))
  assert _rel(np.asarray(_forward(model, IDS)), f32) < 0.05


# --- bad files: one clear error naming the file, tensor and problem ----------------------------


def _tiny(tmp_path, hf_models, name="m.gguf"):
  return write_gguf(hf_models["llama"], str(tmp_path / name), "Q4_0")


def test_truncated_file_is_refused(tmp_path, hf_models):
  path = _tiny(tmp_path, hf_models)
  data = open(path, "rb").read()
  for cut in (len(data) - 33, len(data) // 2):  # past the last tensor's 32-byte alignment pad
    open(path, "wb").write(data[:cut])
    with pytest.raises(GemmaxError, match=r"m\.gguf: not a readable GGUF file .*truncated"):
      load_gguf(path)
  open(path, "wb").write(data[:200])  # inside the header
  with pytest.raises(GemmaxError, match=r"m\.gguf: not a readable GGUF file"):
    load_gguf(path)
  open(path, "wb").write(b"GGUF" + b"\xff" * 60)
  with pytest.raises(GemmaxError, match="not a readable GGUF file"):
    load_gguf(path)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path, hf_models):
  src = _tiny(tmp_path, hf_models)

  def to_tq1(t):  # TQ1_0 (ternary, BitNet): a type gemmax does not dequantize
    if t.name != "blk.1.ffn_up.weight":
      return t.name, np.array(t.data), t.tensor_type
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TQ1_0]
    rows, cols = int(t.shape[1]), 256
    return t.name, np.zeros((rows, cols // block * size), np.uint8), gguf.GGMLQuantizationType.TQ1_0

  path = rewrite_gguf(src, str(tmp_path / "q.gguf"), tensor=to_tq1)
  with pytest.raises(GemmaxError, match=r"tensor blk\.1\.ffn_up\.weight has type TQ1_0"):
    load_gguf(path)


def test_missing_tensor_wrong_shape_and_non_finite(tmp_path, hf_models):
  src = _tiny(tmp_path, hf_models)
  drop = rewrite_gguf(
    src,
    str(tmp_path / "d.gguf"),
    tensor=lambda t: (
      None if t.name == "blk.0.ffn_gate.weight" else (t.name, np.array(t.data), t.tensor_type)
    ),
  )
  with pytest.raises(MissingTensorError, match=r"missing tensor blk\.0\.ffn_gate\.weight"):
    load_gguf(drop)

  def nan(t):
    data = np.array(t.data)
    if t.name == "blk.0.attn_norm.weight":
      data[3] = np.nan
    return t.name, data, t.tensor_type

  with pytest.raises(GemmaxError, match=r"blk\.0\.attn_norm\.weight holds non-finite values"):
    load_gguf(rewrite_gguf(src, str(tmp_path / "n.gguf"), tensor=nan))
  wide = rewrite_gguf(
    src,
    str(tmp_path / "w.gguf"),
    meta=lambda k, v: 96 if k == "llama.feed_forward_length" else v,
  )
  with pytest.raises(GemmaxError, match=r"blk\.0\.ffn_(down|gate|up)\.weight has shape"):
    load_gguf(wide)


def test_unsupported_architecture_and_missing_metadata(tmp_path, hf_models):
  src = _tiny(tmp_path, hf_models)
  phi = rewrite_gguf(
    src, str(tmp_path / "p.gguf"), meta=lambda k, v: None if k.startswith("llama.") else v
  )
  with pytest.raises(GemmaxError, match=r"p\.gguf: lacks llama\.embedding_length"):
    load_gguf(phi)


def test_sharded_load_places_each_tensor_in_its_shards(tmp_path, hf_models):
  from test_sharding import run_worker

  path = write_gguf(hf_models["gemma2"], str(tmp_path / "s.gguf"), "Q8_0")
  out = run_worker("gguf", path)
  assert out["max_diff"] == 0.0 and out["spec"] == "P('fsdp', 'tensor')" and out["shards"] == 8, out

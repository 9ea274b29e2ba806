"""GGUF out: save_gguf files read back by transformers' GGUF loader and by load_gguf, with the
model's tokenizer and chat template; adapters merged on the way out."""

import os

import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM, AutoTokenizer

from gemmax import peft
from gemmax.convert import load_gguf, load_hf, save_gguf
from gemmax.data import load_tokenizer
from gemmax.errors import GemmaxError
from gemmax.peft.targets import iter_modules
from gemmax.sampling import Sampler
from hf_models import llama_config, make_hf_model, save_hf_model

TINY = "checkpoints/gemmax-tiny"
_forward = nnx.jit(lambda model, ids: model(ids))
TEXTS = ["The capital of France is", "Once upon a time, there was", "1 + 1 = 2 and 2 + 2 ="]


def _transformers(path, **kw):
  return AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path),
    gguf_file=os.path.basename(path),
    dtype=torch.float32,
    attn_implementation="eager",
    **kw,
  )


def _rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def tiny():
  return load_hf(TINY), load_tokenizer(TINY)


@pytest.fixture(scope="module")
def ids(tiny):
  _, tok = tiny
  return np.asarray([tok.encode(t, add_bos=True)[:6] for t in TEXTS])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_gemma2_round_trip(tmp_path, tiny, ids, dtype):
  model, tok = tiny
  path = save_gguf(model, str(tmp_path / f"tiny-{dtype}.gguf"), tokenizer=tok, dtype=dtype)
  want = np.asarray(_forward(model, ids))
  back = np.asarray(_forward(load_gguf(path), ids))
  # transformers' Gemma 2 GGUF config keeps its default query_pre_attn_scalar (256); llama.cpp
  # derives head_dim (64 here), which load_gguf follows: give transformers llama.cpp's value.
  hf = _transformers(path, query_pre_attn_scalar=64)
  with torch.no_grad():
    theirs = hf(torch.tensor(ids)).logits.numpy()
  assert _rel(theirs, back) <= 1e-4
  assert _rel(back, want) <= {"f32": 1e-6, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2}[dtype]
  if dtype == "q8_0":  # the same file, two readers: the same greedy continuations
    prompts = [list(r) for r in ids]
    ours = Sampler(load_gguf(path), tok).generate(prompts, 12).tokens
    with torch.no_grad():
      gen = hf.generate(
        torch.tensor(ids), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
      ).numpy()[:, ids.shape[1] :]
    assert [list(map(int, g[: len(o)])) for g, o in zip(gen, ours)] == ours


def test_tokenizer_and_template_travel_with_the_file(tmp_path, tiny):
  model, tok = tiny
  path = save_gguf(model, str(tmp_path / "t.gguf"), tokenizer=tok, dtype="f16")
  back = load_tokenizer(path)
  theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="t.gguf")
  for text in TEXTS + ["  spaces  and\ttabs\n", "<start_of_turn>user\nhi<end_of_turn>"]:
    assert back.encode(text) == tok.encode(text)
    assert theirs.encode(text, add_special_tokens=False) == tok.encode(text)
  assert (back.bos_id, back.eos_id, back.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_llama_with_merged_lora(tmp_path, tiny):
  _, tok = tiny
  hf = make_hf_model(
    llama_config(
      vocab_size=tok.vocab_size,
      hidden_size=64,
      head_dim=24,
      intermediate_size=160,
      num_attention_heads=4,
      num_key_value_heads=2,
      tie_word_embeddings=False,
    )
  )
  model = load_hf(save_hf_model(hf, str(tmp_path / "hf")))
  peft.apply(model, method="lora", rank=4, alpha=8, targets="all-linear", rngs=nnx.Rngs(0))
  for _, mod in iter_modules(model, peft.LoRALinear):  # a trained-looking adapter
    mod.lora_b.set_value(
      0.05 * np.random.RandomState(1).randn(*mod.lora_b.shape).astype(np.float32)
    )
  ids = np.asarray([tok.encode(t, add_bos=True)[:6] for t in TEXTS])
  want = np.asarray(_forward(model, ids))
  path = save_gguf(model, str(tmp_path / "l.gguf"), tokenizer=tok, dtype="f32")
  assert _rel(np.asarray(_forward(load_gguf(path), ids)), want) <= 1e-5
  with torch.no_grad():
    theirs = _transformers(path)(torch.tensor(ids)).logits.numpy()
  assert _rel(theirs, want) <= 1e-4


def test_bad_dtype_and_unrepresentable_config(tmp_path, tiny):
  model, tok = tiny
  with pytest.raises(GemmaxError, match="dtype 'q4_k' is not one of"):
    save_gguf(model, str(tmp_path / "x.gguf"), tokenizer=tok, dtype="q4_k")
  odd = nnx.eval_shape(
    lambda: type(model)(model.config.replace(query_pre_attn_scalar=100), rngs=nnx.Rngs(0))
  )
  with pytest.raises(ValueError, match="query_pre_attn_scalar 100 cannot be written to GGUF"):
    save_gguf(odd, str(tmp_path / "x.gguf"), tokenizer=tok)
  assert not os.listdir(tmp_path)  # nothing half-written left behind


def test_gemma3_round_trip(tmp_path, tiny, ids):
  """A random Gemma 3 (five sliding layers to one global, window 4, QK-norm) written as gemma3 and
  read back by load_gguf and by transformers."""
  from gemmax.models import ModelConfig, Transformer

  _, tok = tiny
  cfg = ModelConfig.preset(
    "gemma3-tiny", vocab_size=tok.vocab_size, sliding_window=4, rope_scaling=None
  )
  model = Transformer(cfg.replace(query_pre_attn_scalar=cfg.head_dim), rngs=nnx.Rngs(1))
  for path_, p in nnx.iter_graph(model):  # non-zero norms so a wrong offset would show
    if isinstance(p, nnx.Param) and path_[-1] == "scale":
      p.set_value(0.3 * np.random.RandomState(len(path_)).randn(*p.shape).astype(np.float32))
  path = save_gguf(model, str(tmp_path / "g3.gguf"), tokenizer=tok, dtype="f32")
  want = np.asarray(_forward(model, ids))
  back = load_gguf(path)
  assert back.config.family == "gemma3" and back.config.layer_window(5) is None
  assert _rel(np.asarray(_forward(back, ids)), want) <= 1e-6
  hf = _transformers(path, query_pre_attn_scalar=cfg.head_dim)
  assert list(hf.config.layer_types)[:6] == ["sliding_attention"] * 5 + ["full_attention"]
  with torch.no_grad():
    theirs = hf(torch.tensor(ids)).logits.numpy()
  assert _rel(theirs, want) <= 1e-4

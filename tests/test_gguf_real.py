"""The registry's real GGUF files (slow: .ci/run fetches them once into the cache): SmolLM2 logits
against transformers' GGUF loader, Gemma 3's K-quant tensors, host memory while loading, and a
q8_0 export that generates what the original does."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from gemmax.convert import load_gguf, save_gguf
from gemmax.data import load_tokenizer, render_chat
from gemmax.fetch import resolve
from gemmax.quant import GGUFFile
from gemmax.sampling import Sampler

pytestmark = pytest.mark.slow
QUESTIONS = [
  "What is the capital of France?",
  "Name three primary colors.",
  "Write a haiku about the sea.",
  "What is 12 times 12?",
]


def _hf(path, **kw):
  from transformers import AutoModelForCausalLM

  return AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32, **kw
  ).eval()


@pytest.fixture(scope="module")
def smol():
  return resolve("smollm2-135m-instruct")


def _chats(tok):
  return [
    tok.encode(
      render_chat(
        [{"role": "user", "content": q}], "model", add_generation_prompt=True, tokenizer=tok
      )
    )
    for q in QUESTIONS
  ]


def test_smollm2_logits_equal_transformers(smol):
  tok = load_tokenizer(smol)
  ids = _chats(tok)
  n = min(len(x) for x in ids)
  batch = np.asarray([x[:n] for x in ids])
  got = np.asarray(nnx.jit(lambda m, x: m(x))(load_gguf(smol), batch))
  with torch.no_grad():
    want = _hf(smol)(torch.tensor(batch)).logits.numpy()
  assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


def test_gemma3_k_quant_tensors_equal_transformers():
  path = resolve("gemma3-270m")
  f = GGUFFile(path)
  kinds = {f.type_name(n): n for n in f.tensors if n.startswith("blk.1.") and len(f.shape(n)) == 2}
  assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0"} <= set(kinds) | {f.type_name("token_embd.weight")}
  state = _hf(path).state_dict()
  hf_names = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
  }
  for qtype, name in kinds.items():
    module = hf_names[name.split(".")[2]]
    want = state[f"model.layers.1.{module}.weight"].numpy()
    np.testing.assert_array_equal(f.read(name), want, err_msg=f"{name} ({qtype})")
  np.testing.assert_array_equal(
    f.read("token_embd.weight"), state["model.embed_tokens.weight"].numpy()
  )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_host_peak_while_loading_is_at_most_1_3x_the_model(smol, dtype):
  probe = (
    "import jax, psutil\n"
    "from gemmax.convert import load_gguf\n"
    "from gemmax.models import param_count\n"
    "jax.numpy.zeros(1).block_until_ready()\n"
    "before = psutil.Process().memory_info().rss\n"
    f"m = load_gguf({smol!r}, {dtype!r})\n"
    "status = open('/proc/self/status').read()  # VmHWM starts afresh at exec; ru_maxrss not\n"
    "peak = int(status.split('VmHWM:')[1].split()[0]) * 1024\n"
    f"print((peak - before) / (param_count(m) * jax.numpy.dtype({dtype!r}).itemsize))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", probe],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  ratio = float(out.stdout.strip().splitlines()[-1])
  assert ratio <= 1.3, ratio


def test_q8_0_export_reads_back_alike_in_both_loaders(smol, tmp_path):
  """The same q8_0 file in gemmax and in transformers: the same greedy generations; and the
  re-quantized model still answers the first question as the original does."""
  tok, model = load_tokenizer(smol), load_gguf(smol)
  ids = _chats(tok)
  original = Sampler(model, tok).generate(ids[:1], 24).text[0]
  path = save_gguf(model, str(tmp_path / "smol-q8_0.gguf"), tokenizer=tok, dtype="q8_0")
  back = Sampler(load_gguf(path), load_tokenizer(path)).generate(ids, 24)
  hf = _hf(path)
  for prompt, tokens in zip(ids, back.tokens):
    with torch.no_grad():
      out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert out[0, len(prompt) :].tolist() == tokens
  assert "Paris" in original and back.text[0] == original

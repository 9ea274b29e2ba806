"""The real Gemma 3 270M GGUF file (Q4_K / Q5_0 / Q6_K / Q8_0) against transformers' GGUF loader
of the same file: logits across the 512 window, and perplexity on the start of
data/pretrain_sample.txt."""

import math
import os

import numpy as np
import pytest
import torch
from flax import nnx

from gemmax.convert import load_gguf
from gemmax.data import load_tokenizer
from gemmax.evals.perplexity import perplexity
from gemmax.fetch import resolve

# One worker runs the module, so both models load once (xdist --dist loadgroup in .ci/run).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gemma3-real")]
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "pretrain_sample.txt")
WINDOW, STRIDE = 1024, 768  # past the 512 window: local and global layers both matter
# The perplexity check reads the sample's first 16,000 characters (3,663 tokens: five
# overlapping windows, the last one short); the whole sample took 20 minutes of CI for both models.
PERPLEXITY_CHARS = 16_000


@pytest.fixture(scope="module")
def path():
  return resolve("gemma3-270m")


@pytest.fixture(scope="module")
def ours(path):
  return load_gguf(path)


@pytest.fixture(scope="module")
def theirs(path):
  from transformers import AutoModelForCausalLM

  return AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path),
    gguf_file=os.path.basename(path),
    dtype=torch.float32,
    attn_implementation="eager",
  ).eval()


def _text_ids(path, n):
  tok = load_tokenizer(path)
  with open(SAMPLE, encoding="utf-8") as f:
    return tok.encode(f.read(), add_bos=True)[:n]


def test_config_of_the_real_file(ours, theirs):
  c, h = ours.config, theirs.config
  assert type(theirs).__name__ == "Gemma3ForCausalLM"
  assert [c.layer_type(i) for i in range(c.num_hidden_layers)] == list(h.layer_types)
  assert c.sliding_window == h.sliding_window == 512
  assert c.query_pre_attn_scalar == h.query_pre_attn_scalar
  assert c.layer_rope(0) == (h.rope_parameters["sliding_attention"]["rope_theta"], None)
  assert c.layer_rope(5) == (h.rope_parameters["full_attention"]["rope_theta"], None)


def test_logits_equal_transformers_across_the_window(path, ours, theirs):
  ids = np.asarray([_text_ids(path, 700)])
  got = np.asarray(nnx.jit(lambda m, x: m(x))(ours, ids))
  with torch.no_grad():
    want = theirs(torch.tensor(ids)).logits.numpy()
  err = np.abs(got - want).max() / np.abs(want).max()
  print(f"gemma3-270m: max relative |dlogit| {err:.2e} over {ids.shape[1]} tokens")
  assert err <= 1e-4
  assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.999


def _hf_perplexity(model, ids):
  """transformers' perplexity with gemmax's windows (evals.perplexity): tokens [done, end) of
  each window scored after its earlier tokens; logits kept only for the scored positions and
  normalised in row chunks (a window's full float32 logits are 1 GiB)."""
  total, n, done, begin = 0.0, 0, 1, 0
  while done < len(ids):
    end = min(begin + WINDOW, len(ids))
    x = torch.tensor([ids[begin:end]])
    with torch.no_grad():
      logits = model(x, logits_to_keep=end - done + 1).logits[0, :-1]  # predicts [done, end)
      tgt = torch.tensor(ids[done:end])
      for i in range(0, len(tgt), 128):
        rows = logits[i : i + 128].float()
        lse = torch.logsumexp(rows, -1).double()
        total -= float((rows.gather(1, tgt[i : i + 128, None])[:, 0].double() - lse).sum())
    n += end - done
    done = end
    begin = max(end - (WINDOW - STRIDE), 0) if end < len(ids) else end
  return math.exp(total / n), n


def test_perplexity_equals_transformers(path, ours, theirs):
  tok = load_tokenizer(path)
  with open(SAMPLE, encoding="utf-8") as f:
    text = f.read(PERPLEXITY_CHARS)
  got = perplexity(ours, tok, text, window=WINDOW, stride=STRIDE, batch_size=1, progress=False)
  want, n = _hf_perplexity(theirs, tok.encode(text, add_bos=True))
  print(
    f"gemma3-270m perplexity on {n} tokens: gemmax {got['perplexity']:.4f}, transformers {want:.4f}"
  )
  assert got["tokens"] == n
  assert abs(got["perplexity"] / want - 1) <= 0.005


def test_prefill_and_decode_of_8192_tokens(path, ours):
  """The real weights through the sampler: 8,128 prompt tokens (the sample text twice) and 64
  greedy ones fill an 8,192-token cache whose 15 local layers hold 512 slots and the 3 global
  ones 8,192; every decoded token is the argmax of a full forward over the whole sequence (the
  ring buffers lose nothing the window needs)."""
  import jax
  import jax.numpy as jnp

  from gemmax.sampling import Sampler

  tok = load_tokenizer(path)
  prompt = (_text_ids(path, 10**6) * 2)[: 8192 - 64]
  sampler = Sampler(ours, tok, max_len=8192)
  out = sampler.generate([prompt], 64, stop=[])
  gen = out.tokens[0]
  assert len(gen) == 64 and out.finish == ["length"]
  cache = sampler._spare  # the call's cache, kept for the next one
  assert [layer.k.shape[2] for layer in cache.layers] == ([512] * 5 + [8192]) * 3
  kv_bytes = sum(layer.k.nbytes + layer.v.nbytes for layer in cache.layers)
  assert kv_bytes == (15 * 512 + 3 * 8192) * 256 * 2 * 4  # head_dim 256, k and v, float32

  @jax.jit
  def last_logits(state, ids):
    model = nnx.merge(graphdef, state)
    return model.logits(model.hidden_states(ids)[:, -64:])

  graphdef, state = nnx.split(ours)
  full = np.asarray(last_logits(state, jnp.asarray([prompt + gen[:-1]])))[0]
  top2 = np.sort(full, -1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-3  # positions whose argmax is not a near tie
  assert clear.mean() > 0.9
  assert np.array_equal(full.argmax(-1)[clear], np.asarray(gen)[clear])

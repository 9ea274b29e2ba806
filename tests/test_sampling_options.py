"""Sampler options: sampling controls, stop ids/strings, cache-full reporting, text prompts."""

import numpy as np
import pytest
from flax import nnx

from gemmax.models import ModelConfig, Transformer
from gemmax.sampling import Sampler


class CharTokenizer:
  """ids 3.. are bytes + 3; 1 = bos, 2 = eos (eos_id -1 here so the random model never stops)."""

  bos_id, eos_id, pad_id = 1, -1, 0

  def encode(self, text, add_bos=True):
    return ([1] if add_bos else []) + [b + 3 for b in text.encode("latin-1")]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("latin-1")


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig.preset("llama3-tiny", vocab_size=259, eos_token_id=None)
  return Transformer(cfg, rngs=nnx.Rngs(3))


PROMPTS = [[1, 40, 50], [1, 7, 8, 9, 10, 11]]


@pytest.mark.slow
def test_sampling_controls(model):
  s = Sampler(model)
  greedy = s.generate(PROMPTS, 8).tokens
  assert s.generate(PROMPTS, 8, temperature=1.0, top_p=1e-6, seed=5).tokens == greedy
  assert s.generate(PROMPTS, 8, temperature=1.0, top_k=1, seed=5).tokens == greedy
  a = s.generate(PROMPTS, 8, temperature=2.0, top_k=50, seed=7).tokens
  assert a == s.generate(PROMPTS, 8, temperature=2.0, top_k=50, seed=7).tokens  # seeded
  assert a != s.generate(PROMPTS, 8, temperature=2.0, top_k=50, seed=8).tokens
  assert a != greedy


def test_stop_id_and_cache_full(model):
  s = Sampler(model)
  greedy = s.generate(PROMPTS, 8).tokens
  stop = greedy[0][2]
  r = s.generate(PROMPTS, 8, stop=[stop])
  first = greedy[0].index(stop)
  assert r.tokens[0] == greedy[0][: first + 1] and r.finish[0] == "stop"
  assert len(r.logprobs[0]) == len(r.tokens[0])
  with pytest.warns(UserWarning, match="cache length"):
    r = Sampler(model, max_len=10).generate(PROMPTS, 8)
  assert r.cache_full and r.finish == ["cache_full"] * 2 and len(r.tokens[0]) == 5
  assert r.tokens[0] == greedy[0][:5]  # what was produced is still right


def test_text_prompts_stream_and_stop_strings(model):
  tok = CharTokenizer()
  s = Sampler(model, tok)
  full = s.generate(["hi", "hello there"], 10)
  assert full.text[1] == tok.decode(full.tokens[1])
  cut = full.text[0][3:5]
  pieces = []
  r = s.generate(
    ["hi", "hello there"], 10, stop=[cut], stream=lambda ids, text: pieces.append(text)
  )
  assert r.text[0] == full.text[0][: full.text[0].find(cut)] and r.finish[0] == "stop"
  assert r.tokens[1] == full.tokens[1] and r.text[1] == full.text[1]
  assert "".join(p[1] for p in pieces) == full.text[1]
  single = s.generate("hi", 10)
  assert single.tokens[0] == full.tokens[0]
  np.testing.assert_allclose(single.logprobs[0], full.logprobs[0], atol=1e-5)


def test_recycled_cache_gives_what_a_new_sampler_gives(model):
  """The last call's cache is emptied in place and reused: nothing of the earlier call shows."""
  s = Sampler(model, max_len=48)
  s.generate([[1, 99, 98, 97, 96, 95, 94, 93, 92, 91]] * 2, 30)  # fills most slots
  spare = s._spare
  again = s.generate(PROMPTS, 12)
  assert spare.layers[0].k.is_deleted()  # its buffers were donated, i.e. reused
  fresh = Sampler(model, max_len=48).generate(PROMPTS, 12)
  assert again.tokens == fresh.tokens
  np.testing.assert_array_equal(np.asarray(again.logprobs), np.asarray(fresh.logprobs))
  streamed = s.generate(PROMPTS, 12, stream=lambda ids, text: None)  # the streaming path too
  assert streamed.tokens == fresh.tokens
  s.generate(PROMPTS[:1], 4)  # another batch size: a new cache, the old one is dropped
  assert s._spare.layers[0].k.shape[0] == 1


@pytest.mark.parametrize("max_len", [513, 8000, 1, -5])
def test_cache_longer_than_the_model_context_is_refused(model, max_len):
  """llama3-tiny holds 512 positions: a cache past them would run positions it never saw."""
  with pytest.raises(ValueError, match=f"max_len {max_len} must be in \\[2, .*512"):
    Sampler(model, max_len=max_len)

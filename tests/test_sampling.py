"""Sampler fidelity against HF transformers' greedy `generate` on tiny random models."""

import numpy as np
import pytest
import torch

from gemmax.convert import load_hf
from gemmax.sampling import Sampler
from hf_models import gemma2_config, llama_config, make_hf_model, save_hf_model


def _hf_greedy(model, prompt, n):
  """HF greedy continuation of one unpadded prompt: (new ids, logprobs of the chosen ids)."""
  out = model.generate(
    torch.tensor([prompt]),
    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    max_new_tokens=n,
    do_sample=False,
    output_logits=True,
    return_dict_in_generate=True,
    pad_token_id=0,
  )
  new = out.sequences[0, len(prompt) :].tolist()
  logits = torch.stack(out.logits, 1)[0].float()
  lp = torch.log_softmax(logits, -1)[torch.arange(len(new)), torch.tensor(new)].numpy()
  return new, lp


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
  hf = make_hf_model(gemma2_config(eos_token_id=255), seed=1)
  path = save_hf_model(hf, str(tmp_path_factory.mktemp("gemma")))
  return hf, load_hf(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  # 512 positions: room for the 300-slot cache of test_llama_long_cache_matches_hf
  hf = make_hf_model(llama_config(eos_token_id=255, max_position_embeddings=512), seed=2)
  path = save_hf_model(hf, str(tmp_path_factory.mktemp("llama")))
  return hf, load_hf(path)


def test_gemma2_greedy_past_window_matches_hf(gemma):
  """Window 8, prompt 6, 20 new tokens: the ring buffer wraps several times."""
  hf, model = gemma
  prompt = [2, 17, 99, 3, 250, 41]
  want, want_lp = _hf_greedy(hf, prompt, 20)
  got = Sampler(model).generate(prompt, 20)
  assert got.tokens[0] == want
  np.testing.assert_allclose(got.logprobs[0], want_lp, atol=1e-4)
  assert got.finish == ["length"] and not got.cache_full


def test_gemma2_long_prompt_prefill_past_window(gemma):
  """A 19-token prompt prefilled in one chunk through an 8-slot ring."""
  hf, model = gemma
  prompt = list(np.random.RandomState(0).randint(3, 250, size=19))
  want, want_lp = _hf_greedy(hf, prompt, 12)
  got = Sampler(model, max_len=64).generate(prompt, 12)
  assert got.tokens[0] == want
  np.testing.assert_allclose(got.logprobs[0], want_lp, atol=1e-4)


def test_llama_batched_prompts_of_different_lengths(llama):
  hf, model = llama
  prompts = [[1, 5, 9], [1, 40, 41, 42, 43, 44, 45, 46, 47, 100, 101], [1, 7, 7, 7, 7, 200]]
  got = Sampler(model).generate(prompts, 15)
  for r, p in enumerate(prompts):
    want, want_lp = _hf_greedy(hf, p, 15)
    assert got.tokens[r] == want, f"row {r}"
    np.testing.assert_allclose(got.logprobs[r], want_lp, atol=1e-4)


def test_gemma2_batched_and_streamed_agree(gemma):
  """The streaming Python loop and the one-jit while_loop give the same tokens/logprobs."""
  _, model = gemma
  prompts = [[2, 3, 4], [2, 10, 11, 12, 13, 14, 15, 16, 17, 18]]
  seen = []
  a = Sampler(model).generate(prompts, 12)
  b = Sampler(model).generate(prompts, 12, stream=lambda ids, text: seen.append(ids))
  assert a.tokens == b.tokens
  np.testing.assert_allclose(np.stack(a.logprobs), np.stack(b.logprobs), atol=1e-5)
  assert [s[0] for s in seen] == a.tokens[0]


def test_llama_long_cache_matches_hf(llama):
  """A 300-slot cache, mostly empty: decode attends only its written blocks (the first one here)."""
  hf, model = llama
  prompts = [[1, 5, 9], [1, 40, 41, 42, 43, 44, 45, 46, 47, 100, 101]]
  got = Sampler(model, max_len=300).generate(prompts, 15)
  for r, p in enumerate(prompts):
    want, want_lp = _hf_greedy(hf, p, 15)
    assert got.tokens[r] == want, f"row {r}"
    np.testing.assert_allclose(got.logprobs[r], want_lp, atol=1e-4)

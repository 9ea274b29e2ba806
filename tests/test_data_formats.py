"""Chat rendering equals transformers' apply_chat_template with the official templates; loss masks cover
exactly the responses."""

import pathlib

import pytest
from test_data_fixtures import gemma_spm, llama3_json  # noqa: F401

from gemmax.data import (
  alpaca_prompt,
  classification_to_alpaca,
  load_tokenizer,
  render_chat,
  tokenize_example,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"

CONVERSATIONS = [
  [{"role": "user", "content": "Hi there"}],
  [{"role": "user", "content": "  What is 2+2?\n"}, {"role": "assistant", "content": "4\n\n"}],
  [
    {"role": "user", "content": "Bonjour, ça va ?"},
    {"role": "assistant", "content": "Oui 😀"},
    {"role": "user", "content": "日本語で"},
    {"role": "assistant", "content": " はい "},
  ],
]
SYSTEM = [{"role": "system", "content": "You are terse."}] + CONVERSATIONS[1]


def _hf_render(template_file, messages, bos, add_generation_prompt):
  from transformers.utils.chat_template_utils import render_jinja_template

  template = (FIXTURES / template_file).read_text()
  out, _ = render_jinja_template(
    conversations=[messages],
    chat_template=template,
    bos_token=bos,
    add_generation_prompt=add_generation_prompt,
  )
  return out[0]


@pytest.mark.parametrize("gen", [False, True])
def test_gemma_matches_official_template(gen):
  for msgs in CONVERSATIONS:
    want = _hf_render("gemma2.jinja", msgs, "<bos>", gen)
    assert render_chat(msgs, "gemma", add_generation_prompt=gen) == want
    assert (
      _hf_render("gemma3.jinja", msgs, "<bos>", gen) == want
    )  # same format without a system turn
  # system text folded into the first user turn (Gemma 2's template raises on a system role)
  assert render_chat(SYSTEM, "gemma", gen) == _hf_render("gemma3.jinja", SYSTEM, "<bos>", gen)
  assert render_chat(SYSTEM, "gemma").startswith(
    "<bos><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?"
  )


@pytest.mark.parametrize("gen", [False, True])
def test_llama3_matches_official_template(gen):
  for msgs in CONVERSATIONS + [SYSTEM]:
    assert render_chat(msgs, "llama3", gen) == _hf_render(
      "llama3.jinja", msgs, "<|begin_of_text|>", gen
    )


def test_apply_chat_template_through_tokenizer(llama3_json):
  from transformers import PreTrainedTokenizerFast

  hf = PreTrainedTokenizerFast(
    tokenizer_file=llama3_json, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
  )
  hf.chat_template = (FIXTURES / "llama3.jinja").read_text()
  tok = load_tokenizer(llama3_json)
  want = hf.apply_chat_template(SYSTEM, tokenize=True, add_generation_prompt=False)
  want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
  ids, _ = tokenize_example(tok, {"messages": SYSTEM}, "chat", "llama3")
  assert ids.tolist() == list(want)


def test_bad_conversations():
  with pytest.raises(ValueError, match="alternate"):
    render_chat([{"role": "assistant", "content": "x"}], "gemma")
  with pytest.raises(ValueError, match="role"):
    render_chat([{"role": "tool", "content": "x"}], "llama3")
  with pytest.raises(ValueError, match="template"):
    render_chat(CONVERSATIONS[0], "chatml")


def _target_text(tok, ids, mask):
  # decode each maximal run of target tokens
  runs, cur = [], []
  for i, m in zip(ids.tolist(), mask.tolist()):
    if m:
      cur.append(i)
    elif cur:
      runs.append(tok.decode(cur, skip_special_tokens=False))
      cur = []
  if cur:
    runs.append(tok.decode(cur, skip_special_tokens=False))
  return runs


def test_chat_loss_mask(gemma_spm, llama3_json):
  msgs = CONVERSATIONS[2]
  g = load_tokenizer(gemma_spm)
  ids, mask = tokenize_example(g, {"messages": msgs}, "chat", "gemma")
  assert ids.tolist() == g.encode(render_chat(msgs, "gemma")) and ids[0] == g.bos_id
  assert _target_text(g, ids, mask) == ["Oui 😀<end_of_turn>", "はい<end_of_turn>"]
  l3 = load_tokenizer(llama3_json)
  ids, mask = tokenize_example(l3, {"messages": msgs}, "chat", "llama3")
  assert _target_text(l3, ids, mask) == ["Oui 😀<|eot_id|>", "はい<|eot_id|>"]


def test_alpaca_and_text(gemma_spm):
  tok = load_tokenizer(gemma_spm)
  rec = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
  ids, mask = tokenize_example(tok, rec, "alpaca")
  prompt = alpaca_prompt("Add the numbers.", "2 and 3")
  assert (
    prompt.endswith("### Input:\n2 and 3\n\n### Response:\n") and "paired with an input" in prompt
  )
  assert "### Input" not in alpaca_prompt("Say hi.")
  assert ids.tolist() == tok.encode(prompt + "5", add_bos=True, add_eos=True)
  assert mask.tolist() == [0] * (len(ids) - 2) + [1, 1]  # "5" and eos
  ids, mask = tokenize_example(tok, {"text": "plain words"}, "text")
  assert (
    ids[0] == tok.bos_id and ids[-1] == tok.eos_id and mask.tolist() == [0] + [1] * (len(ids) - 1)
  )


def test_classification_to_alpaca():
  rec = classification_to_alpaca("great film", 1, "Sentiment?", ["negative", "positive"])
  assert rec == {"instruction": "Sentiment?", "input": "great film", "output": "positive"}
  assert classification_to_alpaca("x", "pos", "S?", {"pos": "yes"})["output"] == "yes"
  with pytest.raises(ValueError, match="label 7"):
    classification_to_alpaca("x", 7, "S?", ["a", "b"])

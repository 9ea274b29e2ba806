"""Jinja chat templates (a checkpoint's own, `template="model"`, or a template string) render as transformers'
apply_chat_template does, mark exactly the assistant turns as targets, and reach the data pipeline: chat rows and
Alpaca rows (as one-turn chats) with the tokenizer's own template."""

import itertools
import json
import os
import pathlib

import numpy as np
import pytest
from test_data_fixtures import gemma_spm, llama3_json  # noqa: F401
from test_gguf_tokenizer import SMOLLM2_TEMPLATE, smollm_json  # noqa: F401

from gemmax.data import (
  DataConfig,
  SourceSpec,
  chat_segments,
  load_records,
  load_tokenizer,
  make_pipeline,
  render_chat,
  tokenize_example,
)
from gemmax.errors import GemmaxError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"
GEMMA2, GEMMA3, LLAMA3 = (
  (FIXTURES / f).read_text() for f in ("gemma2.jinja", "gemma3.jinja", "llama3.jinja")
)

CONVERSATIONS = [
  [{"role": "user", "content": "Hi there"}],
  [{"role": "user", "content": "  What is 2+2?\n"}, {"role": "assistant", "content": "4\n\n"}],
  [
    {"role": "user", "content": "Bonjour, ça va ?"},
    {"role": "assistant", "content": "Oui 😀"},
    {"role": "user", "content": "日本語で 12"},
    {"role": "assistant", "content": " はい "},
  ],
]
SYSTEM = [{"role": "system", "content": "You are terse."}] + CONVERSATIONS[2]


def targets(segments):
  return [t for t, is_target in segments if is_target]


def answer_runs(tok, ids, mask):
  """The decoded text of each maximal run of target tokens."""
  runs = [
    list(g) for k, g in itertools.groupby(zip(ids.tolist(), mask.tolist()), key=lambda x: x[1]) if k
  ]
  return [tok.decode([i for i, _ in run], skip_special_tokens=False) for run in runs]


def hf_ids(out):
  return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("gen", [False, True])
def test_jinja_gemma_and_llama3_equal_builtins(gemma_spm, llama3_json, gen):
  g, l3 = load_tokenizer(gemma_spm), load_tokenizer(os.path.dirname(llama3_json))
  for msgs in CONVERSATIONS + [SYSTEM]:
    for source, name, tok in ((GEMMA3, "gemma", g), (LLAMA3, "llama3", l3)):
      assert render_chat(msgs, source, gen, tokenizer=tok) == render_chat(msgs, name, gen)
      mine, builtin = (
        chat_segments(msgs, source, gen, tokenizer=tok),
        chat_segments(msgs, name, gen),
      )
      assert "".join(t for t, _ in mine) == "".join(t for t, _ in builtin)
      assert targets(mine) == targets(builtin), (name, msgs)
    if msgs[0]["role"] != "system":  # Gemma 2's template rejects a system turn
      assert render_chat(msgs, GEMMA2, gen, tokenizer=g) == render_chat(msgs, "gemma", gen)
  for tok, source, name in ((g, GEMMA3, "gemma"), (l3, LLAMA3, "llama3")):
    a = tokenize_example(tok, {"messages": SYSTEM}, "chat", source)
    b = tokenize_example(tok, {"messages": SYSTEM}, "chat", name)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_model_template_matches_apply_chat_template(smollm_json, llama3_json, tmp_path):
  from transformers import AutoTokenizer, PreTrainedTokenizerFast

  tok, hf = load_tokenizer(smollm_json), AutoTokenizer.from_pretrained(smollm_json)
  l3 = load_tokenizer(os.path.dirname(llama3_json))
  hf3 = PreTrainedTokenizerFast(
    tokenizer_file=llama3_json, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
  )
  hf3.chat_template = LLAMA3
  for msgs in CONVERSATIONS + [SYSTEM]:
    for gen in (False, True):
      for mine, ref, template in ((tok, hf, "model"), (l3, hf3, LLAMA3)):
        text = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert render_chat(msgs, template, gen, tokenizer=mine) == text
        assert mine.encode(text) == hf_ids(ref.apply_chat_template(msgs, add_generation_prompt=gen))
    if any(m["role"] == "assistant" for m in msgs):
      ids, mask = tokenize_example(tok, {"messages": msgs}, "chat", "model")
      assert ids.tolist() == hf_ids(hf.apply_chat_template(msgs))
  # ChatML keeps the content as given: the targets are each answer as written plus its <|im_end|>
  segs = chat_segments(SYSTEM, "model", tokenizer=tok)
  assert targets(segs) == ["Oui 😀<|im_end|>", " はい <|im_end|>"]
  assert targets(chat_segments(CONVERSATIONS[1], "model", tokenizer=tok)) == ["4\n\n<|im_end|>"]
  ids, mask = tokenize_example(tok, {"messages": SYSTEM}, "chat", "model")
  assert answer_runs(tok, ids, mask) == ["Oui 😀<|im_end|>", " はい <|im_end|>"]


def test_environment_matches_transformers():
  """trim/lstrip blocks, loop controls, tojson without HTML escapes, namespace, raise_exception, strftime_now."""
  from transformers.utils.chat_template_utils import render_jinja_template

  template = """{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m['role'] == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    [{{ ns.n }}] {{ m | tojson }} {{ m['content'] | length }}
    {% if loop.index > 3 %}{% break %}{% endif %}
{% endfor %}
{{ bos_token }}{% if add_generation_prompt %}>>{% endif %}{{ strftime_now('%Y') | length }}"""
  for msgs in CONVERSATIONS + [SYSTEM]:
    for gen in (False, True):
      want, _ = render_jinja_template(
        conversations=[msgs], chat_template=template, bos_token="<s>", add_generation_prompt=gen
      )

      class Tok:  # the template sees the tokenizer's special-token strings
        template_tokens = {"bos_token": "<s>"}

      assert render_chat(msgs, template, gen, tokenizer=Tok()) == want[0]
  with pytest.raises(GemmaxError, match="no assistants here"):
    render_chat(
      CONVERSATIONS[1],
      "{% if messages[-1]['role'] == 'assistant' %}"
      "{{ raise_exception('no assistants here') }}{% endif %}",
    )
  with pytest.raises(GemmaxError, match="does not compile"):
    render_chat(CONVERSATIONS[0], "{% for m in messages %}{{ m }")
  with pytest.raises(
    Exception, match="unsafe|access"
  ):  # sandboxed: no reaching into Python internals
    render_chat(
      CONVERSATIONS[0], "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}"
    )


def test_template_errors(gemma_spm, smollm_json):
  g, tok = load_tokenizer(gemma_spm), load_tokenizer(smollm_json)
  with pytest.raises(GemmaxError, match="needs the tokenizer"):
    render_chat(CONVERSATIONS[0], "model")
  with pytest.raises(GemmaxError, match=r"has no chat template.*use template 'gemma'"):
    chat_segments(CONVERSATIONS[1], "model", tokenizer=g)
  with pytest.raises(GemmaxError, match="unknown chat template 'chatml'"):
    render_chat(CONVERSATIONS[0], "chatml")
  growing = "{{ messages | length }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
  assert render_chat(CONVERSATIONS[1], growing) == "2<user>  What is 2+2?\n</s><assistant>4\n\n</s>"
  with pytest.raises(
    GemmaxError, match="prefixes"
  ):  # earlier text changes as the conversation grows
    chat_segments(CONVERSATIONS[1], growing, tokenizer=tok)
  rewrites = "{% for m in messages %}{{ m['content'] | upper }}<|im_end|>{% endfor %}"
  with pytest.raises(GemmaxError, match="content as given"):
    chat_segments(CONVERSATIONS[2], rewrites, tokenizer=tok)


def test_alpaca_rows_through_chat_templates(smollm_json, gemma_spm, llama3_json):
  """Classification scoring splits ids at the first target: the prompt is the same for every label and the rest is
  the label's answer ids plus the end-of-turn (Alpaca: eos)."""
  tok = load_tokenizer(smollm_json)
  g, l3 = load_tokenizer(gemma_spm), load_tokenizer(os.path.dirname(llama3_json))
  labels = ["positive", "negative", "neutral 2"]
  cases = [
    (tok, "alpaca", "<|im_end|>"),
    (tok, "model", "<|im_end|>"),
    (tok, SMOLLM2_TEMPLATE, "<|im_end|>"),
    (g, None, "<eos>"),
    (g, "gemma", "<end_of_turn>"),
    (g, GEMMA3, "<end_of_turn>"),
    (l3, "llama3", "<|eot_id|>"),
  ]
  for t, template, end in cases:
    prompts = set()
    for label in labels:
      rec = {"instruction": "Classify the sentiment.", "input": "I loved it", "output": label}
      ids, mask = tokenize_example(t, rec, "alpaca", template)
      k = int(np.argmax(mask))
      assert mask[:k].sum() == 0 and mask[k:].all(), (template, label)
      prompts.add(tuple(ids[:k].tolist()))
      assert t.decode(ids[k:-1].tolist()) == label and ids[-1] == t.token_to_id(end), (
        template,
        label,
      )
    assert len(prompts) == 1, template
  # the chat form is the model's own conversation: user = instruction + "\n\n" + input, assistant = output
  ids, _ = tokenize_example(
    tok, {"instruction": "Classify.", "input": "x", "output": "y"}, "alpaca", "model"
  )
  assert tok.decode(ids.tolist(), skip_special_tokens=False) == render_chat(
    [{"role": "user", "content": "Classify.\n\nx"}, {"role": "assistant", "content": "y"}],
    "model",
    tokenizer=tok,
  ).rstrip("\n")
  ids, _ = tokenize_example(
    tok, {"instruction": "Classify.", "input": "", "output": "y"}, "alpaca", "model"
  )
  assert "<|im_start|>user\nClassify.<|im_end|>" in tok.decode(
    ids.tolist(), skip_special_tokens=False
  )


def test_source_spec_templates(smollm_json, gemma_spm, tmp_path):
  assert (
    SourceSpec("x.jsonl").template is None and SourceSpec("x.jsonl", template="").template is None
  )
  for kind in ("alpaca", "classification"):
    for template in ("alpaca", "gemma", "llama3", "model", SMOLLM2_TEMPLATE):
      SourceSpec("x.jsonl", kind=kind, template=template, label_words=["a", "b"])
  with pytest.raises(GemmaxError, match="unknown chat template 'alpaca'"):
    SourceSpec("x.jsonl", kind="chat", template="alpaca")
  with pytest.raises(GemmaxError, match="unknown chat template 'chatml'"):
    SourceSpec("x.jsonl", kind="alpaca", template="chatml")

  tok = load_tokenizer(smollm_json)
  alpaca = tmp_path / "a.jsonl"
  alpaca.write_text(
    "".join(
      json.dumps({"instruction": "Say the colour.", "input": "sky", "output": o}) + "\n"
      for o in ("blue", "grey", "black")
    )
  )
  chat = tmp_path / "c.jsonl"
  rows = [
    {"messages": CONVERSATIONS[2]},
    {
      "messages": [
        {"role": "user", "content": "no answer"},
        {"role": "assistant", "content": "fine"},
        {"role": "tool", "content": "x"},
      ]
    },
  ]
  chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
  strict = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + m['role']) }}{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
  )
  recs, bad = load_records(SourceSpec(chat, kind="chat", template=strict), tokenizer=tok)
  assert len(recs) == 1 and bad.count == 1 and "bad role tool" in bad.rows[0][2]
  cfg = DataConfig(seq_len=96, batch_size=2, shuffle=False, num_epochs=1, packing=False, prefetch=0)
  for spec in (
    SourceSpec(alpaca, kind="alpaca", template="model"),
    SourceSpec(chat, kind="chat", template=strict),
  ):
    batch = next(make_pipeline(spec, tok, cfg))
    row = batch["targets"][0][batch["loss_mask"][0] == 1].tolist()
    assert tok.decode(row, skip_special_tokens=False) in (
      "blue<|im_end|>",
      "Oui 😀<|im_end|> はい <|im_end|>",
    )
  with pytest.raises(GemmaxError, match="has no chat template"):
    make_pipeline(
      SourceSpec(alpaca, kind="alpaca", template="model"), load_tokenizer(gemma_spm), cfg
    )

"""GGUF tokenizers: gemmax reads and writes `tokenizer.ggml.*` metadata so that it encodes and decodes like
transformers' GGUF tokenizer (the reference) and like the tokenizer the file was written from.

Tiny files are written here with gguf's own writer; the registry's real files (SmolLM2, Gemma 3) are in the slow
tests. Where gemmax deliberately follows the checkpoint's own tokenizer instead of transformers (SmolLM2's `smollm`
pre-tokenizer, Llama-2-style leading spaces), the tests say so and check both sides.
"""

import json
import os
import pickle  # only to check that tokenizers survive the trip to grain worker processes (our own objects)
import re
import time

import gguf
import pytest
from test_data_fixtures import corpus, gemma_spm, llama2_spm, llama3_json  # noqa: F401

from gemmax.data import GGUFTokenizer, load_tokenizer, write_tokenizer
from gemmax.errors import GemmaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPM = os.path.join(ROOT, "checkpoints", "gemmax-tiny", "tokenizer.model")
SMOLLM2_TEMPLATE = open(
  os.path.join(ROOT, "tests", "fixtures", "chat_templates", "smollm2.jinja")
).read()

TEXTS = [
  "Hello world",
  "  leading and trailing spaces  ",
  "multiple    spaces   between words",
  "tabs\tand\nnew\n\nlines\r\n",
  "héllo wörld — café ñ naïve façade",
  "日本語のテキスト 中文 한국어",
  "emoji 😀🚀👨‍👩‍👧 and ∑∫ math ≠ ≤",
  "x = 1234567 + 89; pi=3.14159",
  "Year 2024, 1,000,000 items, 0.5%",
  "   42 leading spaces before digits",
  "a  1  22   333\t4444",
  "def f(x):\n    return x**2  # comment\n",
  "if (a && b) { return c[i]; }",
  "trailing newline\n",
  "\n\n\nmany newlines\n\n",
  " ",
  "",
  "   ",
  "\t",
  "Ünïcödé ÀÉÎÕÜ",
  "I'm can't won't they'll",
  "URL https://example.com/a?b=c&d=e#f",
  "\u00a0non-breaking\u2009thin space",
  "ÿ\u0100\u07ff\uffff",
]
GEMMA_CHAT = "<bos><start_of_turn>user\nx = 42<end_of_turn>\n<start_of_turn>model\nök <eos><pad>\n<end_of_turn>\n"
CHATML = (
  "<|im_start|>user\nHi there 12<|im_end|>\n<|im_start|>assistant\n <|endoftext|>ok<|im_end|>\n"
)
SPACE_DIGIT = re.compile(
  r"\s\s\d"
)  # a whitespace run before a digit: where `smollm` and transformers part


def write_gguf(path, tokenizer, arch, **kw):
  w = gguf.GGUFWriter(str(path), arch)
  write_tokenizer(w, tokenizer, **kw)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def hf_gguf(path):
  """transformers' own GGUF tokenizer: metadata alone is enough for it (no tensors, no model hyperparameters)."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def assert_same(mine, hf, texts, skip=lambda text: False):
  """Same ids (no bos), same decoded text (with and without special tokens), bos as the checkpoint adds it."""
  for text in texts:
    if skip(text):
      continue
    ids = hf.encode(text, add_special_tokens=False)
    assert mine.encode(text) == ids, text
    assert mine.encode(text, add_bos=mine.add_bos_token) == hf.encode(text), text
    for special in (False, True):
      assert mine.decode(ids, skip_special_tokens=special) == hf.decode(
        ids, skip_special_tokens=special
      ), text
  pad = (
    hf.eos_token_id if hf.pad_token_id is None else hf.pad_token_id
  )  # gemmax: eos when there is no pad
  assert (mine.bos_id, mine.eos_id, mine.pad_id) == (hf.bos_token_id, hf.eos_token_id, pad)


def metadata(path):
  r = gguf.GGUFReader(path)
  return {
    k: (f.contents(), [int(t) for t in f.types])
    for k, f in r.fields.items()
    if k.startswith("tokenizer.")
  }


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
  """gemmax-tiny's 8k SentencePiece vocabulary (Gemma-style) written as a gemma2 GGUF."""
  src = load_tokenizer(os.path.dirname(TINY_SPM))
  return src, write_gguf(tmp_path_factory.mktemp("gemma") / "tiny.gguf", src, "gemma2")


@pytest.fixture(scope="module")
def smollm_json(tmp_path_factory):
  """A SmolLM2-shaped byte-level BPE (digits split one by one, ChatML specials, the SmolLM2 template)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  d = tmp_path_factory.mktemp("smollm")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok.train_from_iterator(
    corpus(150_000).split("\n"),
    trainers.BpeTrainer(
      vocab_size=800,
      special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": SMOLLM2_TEMPLATE,
      }
    )
  )
  return str(d)


def test_gemma_style_sentencepiece(tiny_gemma):
  src, path = tiny_gemma
  tok, hf = load_tokenizer(path), hf_gguf(path)
  assert isinstance(tok, GGUFTokenizer) and tok.vocab_size == src.vocab_size == 8192
  assert tok.add_bos_token is True and tok.chat_template is None
  assert_same(tok, hf, TEXTS + [GEMMA_CHAT, "<unk> x"])
  for text in TEXTS + [GEMMA_CHAT]:  # and like the SentencePiece model it came from
    assert tok.encode(text) == src.encode(text), text
    assert tok.decode(tok.encode(text)) == src.decode(src.encode(text)), text
  # sentencepiece reads a literal "<unk>" as text; llama.cpp and transformers match the unk token whole
  assert tok.encode("<unk>") == [src.token_to_id("<unk>")] != src.encode("<unk>")
  assert tok.special_tokens["<start_of_turn>"] == src.token_to_id("<start_of_turn>")


def test_write_back_is_unchanged(tiny_gemma, tmp_path):
  _, path = tiny_gemma
  tok = load_tokenizer(path)
  again = write_gguf(tmp_path / "again.gguf", tok, "gemma2")
  assert metadata(again) == metadata(path)
  clone = pickle.loads(
    pickle.dumps(tok)
  )  # what grain ships: the generated tokenizer.json, not the GGUF file
  assert (
    clone._data == tok._data
    and clone.fingerprint == tok.fingerprint == load_tokenizer(again).fingerprint
  )
  assert metadata(write_gguf(tmp_path / "clone.gguf", clone, "gemma2")) == metadata(path)
  assert clone.encode(GEMMA_CHAT) == tok.encode(GEMMA_CHAT)
  assert len(pickle.dumps(tok)) < 4 * len(tok._data) and os.path.getsize(path) < len(tok._data)


def test_byte_level_llama3(llama3_json, tmp_path):
  src = load_tokenizer(os.path.dirname(llama3_json))
  path = write_gguf(tmp_path / "l3.gguf", src, "llama")
  meta = metadata(path)
  assert meta["tokenizer.ggml.model"][0] == "gpt2" and meta["tokenizer.ggml.pre"][0] == "llama-bpe"
  tok, hf = load_tokenizer(path), hf_gguf(path)
  chat = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n日本 42<|eot_id|>"
  assert_same(tok, hf, TEXTS + [chat])
  for text in TEXTS + [chat]:
    assert tok.encode(text) == src.encode(text), text
    assert tok.decode(tok.encode(text), False) == src.decode(src.encode(text), False), text
  assert (
    tok.add_bos_token is src.add_bos_token is True
  )  # the tokenizer.json's post-processor adds bos


def test_byte_level_smollm(smollm_json, tmp_path):
  src = load_tokenizer(smollm_json)
  assert src.chat_template == SMOLLM2_TEMPLATE and src.add_bos_token is False
  path = write_gguf(tmp_path / "smol.gguf", src, "llama")
  meta = metadata(path)
  assert (
    meta["tokenizer.ggml.pre"][0] == "smollm"
    and meta["tokenizer.chat_template"][0] == SMOLLM2_TEMPLATE
  )
  tok, hf = load_tokenizer(path), hf_gguf(path)
  assert tok.chat_template == hf.chat_template == SMOLLM2_TEMPLATE and tok.add_bos_token is False
  texts = TEXTS + [CHATML]
  for (
    text
  ) in texts:  # the tokenizer.json it came from (and llama.cpp's `smollm`): digits one by one first
    assert tok.encode(text) == src.encode(text), text
  # transformers has no `smollm` entry and uses the bare GPT-2 regex: same ids except a whitespace run before a
  # digit, which it splits one space short ("a  1": "a", "Ġ", "Ġ", "1"; SmolLM2 itself: "a", "ĠĠ", "1")
  assert_same(tok, hf, texts, skip=SPACE_DIGIT.search)
  differ = [t for t in texts if SPACE_DIGIT.search(t)]
  assert differ and all(tok.encode(t) != hf.encode(t, add_special_tokens=False) for t in differ)


def test_llama_style_sentencepiece(llama2_spm, tmp_path):
  src = load_tokenizer(llama2_spm)
  path = write_gguf(tmp_path / "l2.gguf", src, "llama")
  tok, hf = load_tokenizer(path), hf_gguf(path)
  # sentencepiece (and llama.cpp) put "▁" before text that starts with a space; transformers' Metaspace does not
  assert_same(tok, hf, TEXTS, skip=lambda t: t[:1].isspace())
  for text in TEXTS:
    assert tok.encode(text) == src.encode(text), text
    assert tok.decode(tok.encode(text)) == src.decode(src.encode(text)), text
  assert tok.encode("  x") != hf.encode("  x", add_special_tokens=False)


def test_gemma_file_layout(tmp_path):
  """What real Gemma files hold and the tiny vocabularies lack: space runs stored as spaces (user-defined),
  newline runs user-defined, byte tokens, a token listed twice, merges only implied by the vocabulary. (It has
  a `<mask>`, as Gemma's do: transformers' GemmaTokenizer appends one to a vocabulary without it.)"""
  T = gguf.TokenType
  base = [
    ("<pad>", T.CONTROL),
    ("<eos>", T.CONTROL),
    ("<bos>", T.CONTROL),
    ("<unk>", T.UNKNOWN),
    ("<mask>", T.CONTROL),
    ("<start_of_turn>", T.CONTROL),
    ("<end_of_turn>", T.CONTROL),
    ("\n", T.USER_DEFINED),
    ("\n\n", T.USER_DEFINED),
    ("  ", T.USER_DEFINED),
    ("   ", T.USER_DEFINED),
    ("[img]", T.USER_DEFINED),
  ]
  base += [(f"<0x{b:02X}>", T.BYTE) for b in range(256)]
  words = [
    "▁",
    "a",
    "b",
    "c",
    "ab",
    "bc",
    "▁a",
    "▁ab",
    "abc",
    "▁abc",
    "ca",
    "cab",
    "▁▁",
    "ab",
    "1",
    "2",
    "12",
  ]
  toks = base + [(w, T.NORMAL) for w in words]
  w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma3")
  w.add_tokenizer_model("llama")
  w.add_tokenizer_pre("default")
  w.add_token_list([t for t, _ in toks])
  w.add_token_scores([-float(i) for i in range(len(toks))])
  w.add_token_types([int(k) for _, k in toks])
  w.add_bos_token_id(2)
  w.add_eos_token_id(1)
  w.add_unk_token_id(3)
  w.add_pad_token_id(0)
  w.add_add_bos_token(True)
  w.add_add_space_prefix(False)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  path = str(tmp_path / "g.gguf")
  tok, hf = load_tokenizer(path), hf_gguf(path)
  texts = [
    "abc cab",
    "  abc   ab\n\n\nc",
    " ab  abc\n",
    "a b c 12 21",
    "<start_of_turn>ab<end_of_turn>\n",
    "[img] x é",
    "cabc abcab ab",
    "\tabc",
  ]
  assert_same(tok, hf, texts)
  assert tok.encode("  ") == [tok.token_to_id("▁▁")]  # the space-run token, respelled


def test_load_forms_and_errors(tiny_gemma, tmp_path, monkeypatch):
  src, path = tiny_gemma
  d = tmp_path / "one"
  d.mkdir()
  os.symlink(path, d / "model.gguf")
  assert (
    load_tokenizer(d).fingerprint == load_tokenizer(path).fingerprint
  )  # a directory holding one GGUF
  os.symlink(path, d / "other.gguf")
  with pytest.raises(GemmaxError, match="several GGUF files"):
    load_tokenizer(d)
  from gemmax import fetch  # a registry name resolves through gemmax.fetch (here: to the tiny file)

  monkeypatch.setattr(fetch, "is_registry_name", lambda s: s == "tiny-test-model")
  monkeypatch.setattr(fetch, "resolve", lambda s: path if s == "tiny-test-model" else s)
  assert load_tokenizer("tiny-test-model").encode("abc") == src.encode("abc")

  def gguf_with(name, fields):
    w = gguf.GGUFWriter(str(tmp_path / name), "llama")
    for key, value in fields.items():
      if isinstance(value, list):
        w.add_array(key, value)
      else:
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(tmp_path / name)

  for model in ("t5", "rwkv"):
    bad = gguf_with(
      f"{model}.gguf", {"tokenizer.ggml.model": model, "tokenizer.ggml.tokens": ["a", "b"]}
    )
    with pytest.raises(
      GemmaxError, match=rf"{model}\.gguf: tokenizer\.ggml\.model = '{model}' is not supported"
    ):
      load_tokenizer(bad)
  bad = gguf_with("notok.gguf", {"tokenizer.ggml.model": "gpt2"})
  with pytest.raises(GemmaxError, match=r"notok\.gguf: metadata lacks tokenizer\.ggml\.tokens"):
    load_tokenizer(bad)
  bad = gguf_with(
    "nomerges.gguf", {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]}
  )
  with pytest.raises(GemmaxError, match=r"nomerges\.gguf: metadata lacks tokenizer\.ggml\.merges"):
    load_tokenizer(bad)
  bad = gguf_with("nomodel.gguf", {"general.name": "x"})
  with pytest.raises(GemmaxError, match=r"nomodel\.gguf: metadata lacks tokenizer\.ggml\.model"):
    load_tokenizer(bad)
  (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 40)
  with pytest.raises(GemmaxError, match=r"junk\.gguf: not a readable GGUF file"):
    load_tokenizer(tmp_path / "junk.gguf")


def test_chat_template_and_bos_flag_everywhere(gemma_spm, llama3_json, tmp_path):
  assert (
    load_tokenizer(gemma_spm).chat_template is None
    and load_tokenizer(gemma_spm).add_bos_token is True
  )
  assert (
    load_tokenizer(TINY_SPM).add_bos_token is True
  )  # gemmax-tiny's tokenizer_config.json says so
  d = tmp_path / "hf"
  d.mkdir()
  (d / "tokenizer.json").write_bytes(open(llama3_json, "rb").read())
  cfg = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "add_bos_token": False,
    "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
  }
  (d / "tokenizer_config.json").write_text(json.dumps(cfg))
  tok = load_tokenizer(d)
  assert tok.chat_template == cfg["chat_template"] and tok.add_bos_token is False
  (d / "chat_template.jinja").write_text(
    "{{ eos_token }}"
  )  # newer checkpoints keep it in its own file
  assert load_tokenizer(d).chat_template == "{{ eos_token }}"
  assert pickle.loads(pickle.dumps(load_tokenizer(d))).chat_template == "{{ eos_token }}"


def test_vocab_padding_and_build_time(tiny_gemma, tmp_path):
  src, path = tiny_gemma
  padded = write_gguf(tmp_path / "padded.gguf", src, "gemma2", vocab_size=8200)
  meta = metadata(padded)
  assert (
    len(meta["tokenizer.ggml.tokens"][0]) == 8200
    and meta["tokenizer.ggml.tokens"][0][-1] == "[PAD8199]"
  )
  assert meta["tokenizer.ggml.token_type"][0][-1] == gguf.TokenType.UNUSED
  assert load_tokenizer(padded).encode(GEMMA_CHAT) == src.encode(GEMMA_CHAT)
  with pytest.raises(GemmaxError, match="8192 tokens but the model's vocab_size is 8000"):
    write_gguf(tmp_path / "short.gguf", src, "gemma2", vocab_size=8000)
  start = time.perf_counter()
  load_tokenizer(path)
  assert (
    time.perf_counter() - start < 5.0
  )  # 8k tokens, merges rebuilt from the vocabulary: well under a second


# --- the registry's real files --------------------------------------------------------------------------------------


def _registry(name):
  from gemmax import fetch

  try:
    return fetch.resolve(name)
  except GemmaxError as e:
    pytest.skip(f"registry model {name} is not cached and cannot be fetched here: {e}")


@pytest.mark.slow
def test_real_smollm2(tmp_path):
  path = _registry("smollm2-135m-instruct")
  start = time.perf_counter()
  tok = load_tokenizer("smollm2-135m-instruct")
  print(f"SmolLM2 tokenizer (49,152 tokens, 48,900 merges): {time.perf_counter() - start:.2f} s")
  hf = hf_gguf(path)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos_token) == (
    49152,
    1,
    2,
    2,
    False,
  )
  assert tok.chat_template == hf.chat_template == SMOLLM2_TEMPLATE
  assert_same(tok, hf, TEXTS + [CHATML], skip=SPACE_DIGIT.search)
  assert tok.encode("a  1") == [
    tok.token_to_id(t) for t in ("a", "ĠĠ", "1")
  ]  # SmolLM2's own (and llama.cpp's)
  from gemmax.data import render_chat, tokenize_example

  chat = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
  ]
  for gen in (False, True):
    text = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    ids = hf.apply_chat_template(chat, add_generation_prompt=gen)
    assert render_chat(chat, "model", gen, tokenizer=tok) == text
    assert tok.encode(text) == list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  ids, mask = tokenize_example(
    tok, {"instruction": "Capital of France?", "input": "", "output": "Paris"}, "alpaca", "model"
  )
  k = int(mask.argmax())
  assert (
    tok.decode(ids[k:].tolist(), skip_special_tokens=False) == "Paris<|im_end|>" and mask[k:].all()
  )
  again = write_gguf(tmp_path / "smol.gguf", tok, "llama")
  assert metadata(again) == metadata(path)


@pytest.mark.slow
def test_real_gemma3(tmp_path):
  path = _registry("gemma3-270m")
  from gemmax.data import load_gguf_tokenizer
  from gemmax.quant import GGUFFile

  reader_start = time.perf_counter()
  reader = GGUFFile(path, keep=lambda key: key.startswith(("tokenizer.", "general.")))
  build_start = time.perf_counter()
  tok = load_gguf_tokenizer(path, reader=reader)
  build = time.perf_counter() - build_start
  print(
    f"Gemma 3 tokenizer (262,144 tokens): header {build_start - reader_start:.1f} s, "
    f"build {build:.1f} s"
  )
  assert (
    build < 15.0
  )  # ~3-4 s on 2 busy cores; the reader's own parse of the header is most of a load
  hf = hf_gguf(path)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos_token) == (
    262144,
    2,
    1,
    0,
    True,
  )
  assert tok.chat_template is None
  assert_same(tok, hf, TEXTS + [GEMMA_CHAT, "<unk> <mask> [multimodal]"])
  assert tok.encode("The capital of France is", add_bos=True) == [2, 818, 5279, 529, 7001, 563]
  again = write_gguf(tmp_path / "gemma.gguf", tok, "gemma3")
  assert metadata(again) == metadata(path)

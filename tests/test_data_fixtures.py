"""Tiny tokenizers trained here (no downloads) on text from Python's own docstrings; shared by test_data_*.py.

Import the fixtures with `from test_data_fixtures import gemma_spm, llama2_spm, llama3_json  # noqa`.
"""

import importlib
import json
import os
import sys

import pytest

LLAMA3_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
  "<|begin_of_text|>",
  "<|end_of_text|>",
  "<|start_header_id|>",
  "<|end_header_id|>",
  "<|eot_id|>",
]
GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>"]

TRICKY = [
  "Hello world",
  "x = 1234567 + 89",
  "  leading and trailing spaces  ",
  "tabs\tand\nnew\n\nlines",
  "héllo wörld — café ñ",
  "日本語のテキスト 中文 한국어",
  "emoji 😀🚀 and ∑∫ math",
  "",
]


def corpus(n_chars: int = 400_000) -> str:
  """English text from stdlib docstrings (deterministic for a given Python build)."""
  out, total = [], 0
  for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
      continue
    try:
      mod = importlib.import_module(name)
    except Exception:
      continue
    for obj in [mod] + [getattr(mod, a, None) for a in sorted(dir(mod))[:300]]:
      doc = getattr(obj, "__doc__", None)
      if isinstance(doc, str) and len(doc) > 40:
        out.append(doc)
        total += len(doc)
    if total > n_chars:
      break
  # a few non-ASCII lines so that common accented letters get pieces (the rest exercises byte fallback)
  out += ["café naïve résumé façade über", "numbers 2024 and 1,000,000"] * 20
  return "\n".join(out)


def train_spm(tmpdir, name="gemma", vocab_size=1000, dummy_prefix=False, n_chars=400_000) -> str:
  """Gemma-like (no dummy prefix, pad0 eos1 bos2 unk3, turn markers) or Llama-2-like (dummy prefix,
  unk0 bos1 eos2) SentencePiece BPE model with split_digits and byte_fallback.
  Writes tmpdir/tokenizer.model (the name transformers' from_pretrained looks for); returns its path."""
  import sentencepiece as spm

  txt = os.path.join(tmpdir, f"{name}_corpus.txt")
  with open(txt, "w", encoding="utf-8") as f:
    f.write(corpus(n_chars))
  ids = (
    dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    if dummy_prefix
    else dict(
      pad_id=0,
      eos_id=1,
      bos_id=2,
      unk_id=3,
      pad_piece="<pad>",
      eos_piece="<eos>",
      bos_piece="<bos>",
    )
  )
  spm.SentencePieceTrainer.train(
    input=txt,
    model_prefix=os.path.join(tmpdir, "tokenizer"),
    vocab_size=vocab_size,
    model_type="bpe",
    split_digits=True,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=dummy_prefix,
    user_defined_symbols=[] if dummy_prefix else GEMMA_SPECIALS,
    character_coverage=0.9995,
    minloglevel=2,
    num_threads=2,
    max_sentence_length=1 << 16,
    **ids,
  )
  return os.path.join(tmpdir, "tokenizer.model")


def train_llama3_json(tmpdir, vocab_size=1000) -> str:
  """Byte-level BPE with the Llama 3 split regex, Llama 3 special tokens and a bos post-processor.
  Writes tokenizer.json and tokenizer_config.json into tmpdir; returns the tokenizer.json path."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=LLAMA3_SPECIALS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(corpus().split("\n"), trainer)
  bos = tok.token_to_id("<|begin_of_text|>")
  tok.post_processor = processors.TemplateProcessing(
    single="<|begin_of_text|> $A",
    pair="<|begin_of_text|> $A <|begin_of_text|> $B",
    special_tokens=[("<|begin_of_text|>", bos)],
  )
  path = os.path.join(tmpdir, "tokenizer.json")
  tok.save(path)
  with open(os.path.join(tmpdir, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, f)
  return path


@pytest.fixture(scope="session")
def gemma_spm(tmp_path_factory):
  return train_spm(str(tmp_path_factory.mktemp("gemma_spm")), "gemma")


@pytest.fixture(scope="session")
def llama2_spm(tmp_path_factory):
  return train_spm(str(tmp_path_factory.mktemp("llama2_spm")), "llama2", dummy_prefix=True)


@pytest.fixture(scope="session")
def llama3_json(tmp_path_factory):
  return train_llama3_json(str(tmp_path_factory.mktemp("llama3_json")))

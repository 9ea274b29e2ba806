"""tokenizer.json specs for the `tokenizers` library from GGUF vocabulary arrays (tokens, token
types, merges or scores): byte-level BPE for `gpt2` files and BPE with byte fallback, its merges
rebuilt from the vocabulary, for SentencePiece-style `llama` files. gguf_tokenizer.py reads the
metadata and assembles the tokenizer from these pieces; gguf_tokenizer_write.py writes them back.
"""

from __future__ import annotations

from gemmax.errors import GemmaxError

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

_LLAMA3 = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
  r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` -> split regex applied before byte-level BPE (transformers' table; the names are llama.cpp's).
PRE_SPLITS = {
  **dict.fromkeys(
    (
      "llama3",
      "llama-v3",
      "llama-bpe",
      "falcon3",
      "falcon-h1",
      "pixtral",
      "midm-2.0",
      "lfm2",
      "jina-v5-nano",
      "dbrx",
      "smaug-bpe",
    ),
    _LLAMA3,
  ),
  "tekken": _TEKKEN,
  **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
  "qwen35": _QWEN35,
  **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}
# the name written for a tokenizer.json whose split regex is one of these
_PRE_NAME = {
  _LLAMA3: "llama-bpe",
  _QWEN2: "qwen2",
  _QWEN35: "qwen35",
  _TEKKEN: "tekken",
  _GPT4O: "gpt-4o",
}


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable spelling of the 256 byte values (byte-level BPE vocabularies are written in it)."""
  keep = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
  ]
  extra = [b for b in range(256) if b not in keep]
  return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


# --- reading ------------------------------------------------------------------------------------------------------


def _added(tokens, types, keep) -> list[dict]:
  """Added-token entries: control tokens special, user-defined ones plain, where keep(token, type) says so."""
  out = []
  for i, (t, k) in enumerate(zip(tokens, types)):
    if k in (CONTROL, USER_DEFINED) and keep(t, k):
      out.append(
        {
          "id": i,
          "content": t,
          "single_word": False,
          "lstrip": False,
          "rstrip": False,
          "normalized": False,
          "special": k == CONTROL,
        }
      )
  return out


def add_named(spec: dict, tokens: list[str], ids: list[int]) -> None:
  """bos / eos / unk / pad become special added tokens even when the file types them otherwise (an UNKNOWN
  `<unk>`): transformers registers them so, and llama.cpp matches UNKNOWN-typed tokens whole as well."""
  vocab, entries = spec["model"]["vocab"], {e["id"]: e for e in spec["added_tokens"]}
  for i in ids:
    if vocab.get(tokens[i]) == i:  # only tokens the vocabulary spells as the file does
      entries[i] = {
        "id": i,
        "content": tokens[i],
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
      }
  spec["added_tokens"] = [entries[i] for i in sorted(entries)]


def byte_level(tokens, types, merges, pre, path) -> dict:
  alphabet = _byte_alphabet()
  spelled = set(alphabet.values())
  vocab = {}
  for i, t in enumerate(
    tokens
  ):  # a token outside the byte alphabet is spelled in it (later duplicates win)
    vocab[t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))] = i
  pairs = []
  for m in merges:
    left, sep, right = m.partition(" ")
    if not sep:
      raise GemmaxError(
        f"{path}: tokenizer.ggml.merges holds {m!r}, not two tokens separated by a space"
      )
    pairs.append([left, right])
  # A control token written outside the byte alphabet is a converter's mislabel: adding it would grow the
  # vocabulary past the model's, so (as transformers) it stays a plain vocabulary entry.
  added = _added(tokens, types, lambda t, k: set(t) <= spelled if k == CONTROL else t in vocab)
  if (
    pre == "smollm"
  ):  # SmolLM's tokenizer.json (and llama.cpp): digits one by one, then the GPT-2 regex
    pre_tok = {
      "type": "Sequence",
      "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
      ],
    }
  elif pre in PRE_SPLITS:
    pre_tok = {
      "type": "Sequence",
      "pretokenizers": [
        {
          "type": "Split",
          "pattern": {"Regex": PRE_SPLITS[pre]},
          "behavior": "Isolated",
          "invert": False,
        },
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
      ],
    }
  else:
    pre_tok = {
      "type": "ByteLevel",
      "add_prefix_space": False,
      "trim_offsets": True,
      "use_regex": True,
    }
  return {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": added,
    "normalizer": None,
    "pre_tokenizer": pre_tok,
    "post_processor": None,
    "decoder": {
      "type": "ByteLevel",
      "add_prefix_space": True,
      "trim_offsets": True,
      "use_regex": True,
    },
    "model": {
      "type": "BPE",
      "dropout": None,
      "unk_token": None,
      "continuing_subword_prefix": "",
      "end_of_word_suffix": "",
      "fuse_unk": False,
      "byte_fallback": False,
      "ignore_merges": False,
      "vocab": vocab,
      "merges": pairs,
    },
  }


def sentencepiece(tokens, types, scores, arch, add_space_prefix) -> dict:
  gemma, original = arch in GEMMA_ARCHITECTURES, tokens
  if (
    gemma
  ):  # Gemma files store space-run tokens ("  ") as spaces; the tokenizer looks them up as "▁▁"
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    ranks = range(0, -len(tokens), -1)  # file order is merge order
  else:
    ranks = scores
  vocab = {t: i for i, t in enumerate(tokens)}
  # a user-defined token is added as the file spells it, and only when the vocabulary knows that spelling
  added = _added(original, types, lambda t, k: k == CONTROL or t in vocab)
  decoders = [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
  ]
  space = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
  if gemma:
    normalizer = space
    pre_tok = {
      "type": "Split",
      "pattern": {"String": " "},
      "behavior": "MergedWithPrevious",
      "invert": False,
    }
  else:  # Llama 2 style: "▁" before every stretch of text, as sentencepiece and llama.cpp do. transformers uses
    # Metaspace(prepend_scheme="first") here (phi3 aside), which adds none before text that starts with a space
    # or follows a special token: "  a" is "▁▁▁a" in sentencepiece and "▁▁a" there.
    prefix = [{"type": "Prepend", "prepend": "▁"}] if add_space_prefix else []
    normalizer, pre_tok = {"type": "Sequence", "normalizers": prefix + [space]}, None
  if not gemma and add_space_prefix:
    decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  return {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": added,
    "normalizer": normalizer,
    "pre_tokenizer": pre_tok,
    "post_processor": None,
    "decoder": {"type": "Sequence", "decoders": decoders},
    "model": {
      "type": "BPE",
      "dropout": None,
      "unk_token": "<unk>" if gemma else None,
      "continuing_subword_prefix": None,
      "end_of_word_suffix": None,
      "fuse_unk": True,
      "byte_fallback": True,
      "ignore_merges": False,
      "vocab": vocab,
      "merges": derived_merges(tokens, ranks),
    },
  }


def derived_merges(tokens: list[str], ranks) -> list[list[str]]:
  """Merges implied by a vocabulary: each split of a token into two vocabulary tokens, ordered by the token's
  rank (higher first), then longer left part, then longer right part; ties keep the order of the tokens and of
  the parts' ids. Same order as transformers' `generate_merges` (a token listed twice takes its last rank and
  id, as in a dict built from the list)."""
  vocab = {t: i for i, t in enumerate(tokens)}
  rank = list(dict(zip(tokens, ranks)).items())
  if all(
    a[1] > b[1] for a, b in zip(rank, rank[1:])
  ):  # no ties, already best first (Gemma: file order)
    out = []
    add = out.append
    for t, _ in rank:  # the hot loop of a 262k vocabulary (~1.2M splits): kept plain
      for k in range(len(t) - 1, 0, -1):
        left = t[:k]
        if left in vocab:
          right = t[k:]
          if right in vocab:
            add([left, right])
    return out
  found = []
  for t, r in rank:
    splits = sorted(
      (vocab[t[:k]], vocab[t[k:]], k) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab
    )
    found += [(r, k, len(t) - k, t[:k], t[k:]) for _, _, k in splits]
  found.sort(
    key=lambda m: (m[0], m[1], m[2]), reverse=True
  )  # stable, like sorted(..., reverse=True)
  return [[m[3], m[4]] for m in found]


def post_processor(tokens, ids, add_bos, add_eos) -> dict:
  """TemplateProcessing that adds bos / eos as the checkpoint does (gemmax itself asks for them explicitly)."""
  ends = [(name, ids[name]) for name, flag in (("bos", add_bos), ("eos", add_eos)) if flag]
  special = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for _, i in ends}

  def template(seq, type_id):
    out = [
      {"SpecialToken": {"id": tokens[i], "type_id": type_id}} for name, i in ends if name == "bos"
    ]
    out.append({"Sequence": {"id": seq, "type_id": type_id}})
    return out + [
      {"SpecialToken": {"id": tokens[i], "type_id": type_id}} for name, i in ends if name == "eos"
    ]

  return {
    "type": "TemplateProcessing",
    "single": template("A", 0),
    "pair": template("A", 0) + template("B", 1),
    "special_tokens": special,
  }

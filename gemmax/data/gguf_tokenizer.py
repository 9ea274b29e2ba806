"""GGUF tokenizers: llama.cpp's `tokenizer.ggml.*` metadata read into a gemmax `Tokenizer`, and written back.

    tok = load_gguf_tokenizer("model.gguf")          # or gemmax.data.load_tokenizer("model.gguf" | dir | registry name)
    write_tokenizer(writer, tok)                      # into a gguf.GGUFWriter, before writer.write_kv_data_to_file()

Reading follows transformers' GGUF loader, the reference the tests compare with. The file's vocabulary becomes an
HF `tokenizers` tokenizer.json that the `tokenizers` library runs:
  gpt2  (byte-level BPE: SmolLM2, Llama 3, Qwen): the file's tokens and merges, and the split regex named by
        `tokenizer.ggml.pre` (the one the merges were learned with; GPT-2's own when the name is not known).
  llama (SentencePiece-style: Gemma, Llama 2): BPE with byte fallback. The file has no merges, so they are rebuilt
        from the vocabulary: every split of a token into two tokens, best first -- by file position for Gemma
        architectures (whose scores do not follow the merge order), by score otherwise. Gemma files store space-run
        tokens as real spaces; they are respelled with "▁" as the tokenizer looks them up.
Control tokens become special added tokens (matched whole, skipped by decode), user-defined ones plain added tokens.
One deliberate difference: `pre = smollm` isolates every digit before the GPT-2 regex, as SmolLM2's own
tokenizer.json and llama.cpp do; transformers (5.x) has no entry for it and falls back to the bare GPT-2 regex,
which splits a run of spaces before a digit differently ("a  1": "a", "ĠĠ", "1" here, "a", "Ġ", "Ġ", "1" there).

`write_tokenizer` (gguf_tokenizer_write.py) is the way back.
"""

from __future__ import annotations

import json
import os

from gemmax.data.tokenizer import HFTokenizer
from gemmax.errors import GemmaxError

__all__ = ["GGUFTokenizer", "load_gguf_tokenizer", "tokenizer_metadata"]

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


class GGUFTokenizer(HFTokenizer):
  """A tokenizer built from GGUF metadata. `data` is the generated tokenizer.json; the config holds the special
  ids, flags, chat template and the file's `tokenizer.*` fields (for `write_tokenizer`). Pickles as those two,
  never as the model file."""

  def _build(self):
    self._load_backend()
    cfg = self._config
    self.bos_id, self.eos_id = cfg["bos_token_id"], cfg["eos_token_id"]
    self.pad_id = cfg["pad_token_id"] if cfg.get("pad_token_id") is not None else self.eos_id
    self.add_bos_token = bool(cfg["add_bos_token"])


def load_gguf_tokenizer(path: str | os.PathLike, reader=None) -> GGUFTokenizer:
  """The tokenizer of a GGUF file. `reader`: the file already opened as a `gemmax.quant.GGUFFile` holding its
  tokenizer fields (parsing the header walks every array element: ~10 s for Gemma 3's 262k-token vocabulary)."""
  path = os.fspath(path)
  meta = tokenizer_metadata(reader if reader is not None else _open(path), path)
  data, config = _tokenizer_json(meta, path)
  try:
    return GGUFTokenizer(data, path, config)
  except GemmaxError:
    raise
  except Exception as e:  # noqa: BLE001 -- `tokenizers` rejects what it cannot build, with its own types
    raise GemmaxError(
      f"{path}: cannot build a tokenizer from its metadata ({type(e).__name__}: "
      f"{' '.join(str(e).split())[:200]})"
    ) from None


def _wanted(key: str) -> bool:
  return key.startswith("tokenizer.") or key == "general.architecture"


def _open(path: str):
  from gemmax.quant.gguf_file import GGUFFile

  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  return GGUFFile(path, keep=_wanted)


def tokenizer_metadata(reader, path: str) -> dict:
  """{key: (value, value type, array item type or None)} for `general.architecture` and every `tokenizer.*` key,
  with the types as gguf.GGUFValueType ints, so they can be written back exactly."""
  return {
    key: (value, int(vtype), None if sub is None else int(sub))
    for key, (value, vtype, sub) in reader.fields.items()
    if _wanted(key)
  }


def _tokenizer_json(meta: dict, path: str) -> tuple[bytes, dict]:
  """(tokenizer.json bytes, GGUFTokenizer config) for the tokenizer the metadata describes."""

  def get(key, default=None, required=False):
    if key not in meta:
      if required:
        raise GemmaxError(f"{path}: metadata lacks {key}, which a tokenizer needs")
      return default
    return meta[key][0]

  model = get("tokenizer.ggml.model", required=True)
  tokens = get("tokenizer.ggml.tokens", required=True)
  if not isinstance(tokens, list) or not tokens:
    raise GemmaxError(f"{path}: metadata field tokenizer.ggml.tokens is empty or not a list")
  types = get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
  if len(types) != len(tokens):
    raise GemmaxError(
      f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
    )
  arch = get("general.architecture", "")
  add_bos = get(
    "tokenizer.ggml.add_bos_token", model == "llama"
  )  # llama.cpp's default for SentencePiece
  add_eos = bool(get("tokenizer.ggml.add_eos_token", False))
  ids = {}
  for name, key in (
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("pad", "padding_token_id"),
  ):
    i = get(f"tokenizer.ggml.{key}")
    if i is not None and not 0 <= int(i) < len(tokens):
      raise GemmaxError(
        f"{path}: tokenizer.ggml.{key} = {i} is outside the {len(tokens)}-token vocabulary"
      )
    ids[name] = None if i is None else int(i)

  if model == "gpt2":
    spec = _byte_level(
      tokens, types, get("tokenizer.ggml.merges", required=True), get("tokenizer.ggml.pre"), path
    )
  elif model == "llama":
    gemma = arch in GEMMA_ARCHITECTURES
    scores = None if gemma else get("tokenizer.ggml.scores", required=True)
    if scores is not None and len(scores) != len(tokens):
      raise GemmaxError(
        f"{path}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens"
      )
    spec = _sentencepiece(
      tokens, types, scores, arch, bool(get("tokenizer.ggml.add_space_prefix", True))
    )
  else:
    raise GemmaxError(
      f"{path}: tokenizer.ggml.model = {model!r} is not supported (gemmax reads 'gpt2' "
      "byte-level BPE and 'llama' SentencePiece-style vocabularies)"
    )

  for name in ("bos", "eos"):  # files without the id: the usual names, as HFTokenizer does
    if ids[name] is None:
      fallback = HFTokenizer._BOS if name == "bos" else HFTokenizer._EOS
      ids[name] = next((tokens.index(t) for t in fallback if t in tokens), None)
  if ids["eos"] is None:
    raise GemmaxError(
      f"{path}: metadata lacks tokenizer.ggml.eos_token_id and no usual eos token is in the "
      "vocabulary"
    )
  if ids["bos"] is None:
    ids["bos"] = ids["eos"]
  _add_named(spec, tokens, [i for name, i in ids.items() if i is not None])
  spec["post_processor"] = _post_processor(tokens, ids, bool(add_bos), add_eos)
  data = json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  config = {f"{name}_token": tokens[i] for name, i in ids.items() if i is not None}
  config.update({f"{name}_token_id": i for name, i in ids.items()})
  config.update(
    add_bos_token=bool(add_bos),
    add_eos_token=add_eos,
    chat_template=get("tokenizer.chat_template"),
    gguf=meta,
  )
  return data, config


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


def _add_named(spec: dict, tokens: list[str], ids: list[int]) -> None:
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


def _byte_level(tokens, types, merges, pre, path) -> dict:
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


def _sentencepiece(tokens, types, scores, arch, add_space_prefix) -> dict:
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


def _post_processor(tokens, ids, add_bos, add_eos) -> dict:
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

"""Tokenizers written into GGUF: every `tokenizer.ggml.*` key and `tokenizer.chat_template`, into a `gguf.GGUFWriter`,
so that llama.cpp and transformers rebuild the same tokenizer.

    write_tokenizer(writer, tok)   # before writer.write_kv_data_to_file()

A GGUF tokenizer writes its file's fields back unchanged; a SentencePiece `.model` writes model `llama` (tokens,
scores, types as llama.cpp's convert_hf_to_gguf.py does); a byte-level BPE tokenizer.json writes model `gpt2` with
its merges and the `pre` name of its split regex.
"""

from __future__ import annotations

import json
import os

from gemmax.data.gguf_tokenizer import GGUFTokenizer
from gemmax.data.gguf_vocab import (
  _PRE_NAME,
  BYTE,
  CONTROL,
  NORMAL,
  UNKNOWN,
  UNUSED,
  USER_DEFINED,
)
from gemmax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer
from gemmax.errors import GemmaxError

__all__ = ["write_tokenizer"]


def write_tokenizer(writer, tokenizer: Tokenizer, vocab_size: int | None = None) -> None:
  """Adds every `tokenizer.ggml.*` key and `tokenizer.chat_template` for `tokenizer` to a `gguf.GGUFWriter`.

  vocab_size: the model's embedding rows; a shorter vocabulary is padded with unused `[PAD{i}]` tokens, as
  llama.cpp's converter does, so the file's vocabulary matches the model."""
  import gguf

  V = gguf.GGUFValueType
  if isinstance(tokenizer, GGUFTokenizer):
    fields = {k: v for k, v in tokenizer._config["gguf"].items() if k.startswith("tokenizer.")}
  elif isinstance(tokenizer, SentencePieceTokenizer):
    fields = _sentencepiece_fields(tokenizer)
  elif isinstance(tokenizer, HFTokenizer):
    fields = _tokenizer_json_fields(tokenizer)
  else:
    raise GemmaxError(f"cannot write a {type(tokenizer).__name__} ({tokenizer.path}) into GGUF")
  fields = dict(fields)
  fields.pop("tokenizer.chat_template", None)
  if tokenizer.chat_template:
    fields["tokenizer.chat_template"] = (tokenizer.chat_template, int(V.STRING), None)
  n = len(fields["tokenizer.ggml.tokens"][0])
  if vocab_size is not None and vocab_size < n:
    raise GemmaxError(
      f"tokenizer {tokenizer.path} has {n} tokens but the model's vocab_size is {vocab_size}"
    )
  if vocab_size is not None and vocab_size > n:
    pads = {
      "tokenizer.ggml.tokens": [f"[PAD{i}]" for i in range(n, vocab_size)],
      "tokenizer.ggml.scores": [-1000.0] * (vocab_size - n),
      "tokenizer.ggml.token_type": [UNUSED] * (vocab_size - n),
    }
    for key, extra in pads.items():
      if key in fields:
        value, vtype, sub = fields[key]
        fields[key] = (list(value) + extra, vtype, sub)
  for key, (value, vtype, sub) in fields.items():
    if vtype == V.ARRAY:
      if len(value) == 0:  # the writer refuses empty arrays; an absent key reads the same
        continue
      writer.add_key_value(key, list(value), V.ARRAY, sub_type=V(sub))
    else:
      writer.add_key_value(key, value, V(vtype))


def _scalars(tokenizer: Tokenizer, unk: int | None, add_eos: bool = False) -> dict:
  import gguf

  V = gguf.GGUFValueType
  out = {
    "tokenizer.ggml.bos_token_id": tokenizer.bos_id,
    "tokenizer.ggml.eos_token_id": tokenizer.eos_id,
  }
  if unk is not None and unk >= 0:
    out["tokenizer.ggml.unknown_token_id"] = unk
  if tokenizer.pad_id is not None:
    out["tokenizer.ggml.padding_token_id"] = tokenizer.pad_id
  fields = {k: (int(v), int(V.UINT32), None) for k, v in out.items()}
  fields["tokenizer.ggml.add_bos_token"] = (bool(tokenizer.add_bos_token), int(V.BOOL), None)
  fields["tokenizer.ggml.add_eos_token"] = (bool(add_eos), int(V.BOOL), None)
  return fields


def _sentencepiece_fields(tok: SentencePieceTokenizer) -> dict:
  """llama.cpp's `_create_vocab_sentencepiece`: pieces, scores and types from the model; tokens that
  tokenizer_config.json's added_tokens_decoder lists become control (special) or user-defined, score -1000.
  Unlike llama.cpp, the model's own user-defined pieces stay user-defined (llama.cpp makes them normal, so they
  stop matching whole) and its additional_special_tokens become control, as HF's GemmaTokenizer treats them."""
  import gguf
  from sentencepiece import sentencepiece_model_pb2 as pb

  V = gguf.GGUFValueType
  proto = pb.ModelProto()
  proto.ParseFromString(tok._data)
  kinds = {
    pb.ModelProto.SentencePiece.NORMAL: NORMAL,
    pb.ModelProto.SentencePiece.UNKNOWN: UNKNOWN,
    pb.ModelProto.SentencePiece.CONTROL: CONTROL,
    pb.ModelProto.SentencePiece.USER_DEFINED: USER_DEFINED,
    pb.ModelProto.SentencePiece.UNUSED: UNUSED,
    pb.ModelProto.SentencePiece.BYTE: BYTE,
  }
  tokens = [p.piece for p in proto.pieces]
  scores = [float(p.score) for p in proto.pieces]
  types = [kinds.get(p.type, NORMAL) for p in proto.pieces]
  named = {
    t.get("content") if isinstance(t, dict) else t  # HF's GemmaTokenizer: turn markers are special
    for t in tok._config.get("additional_special_tokens") or []
  }
  for i, t in enumerate(tokens):
    if t in named and types[i] in (NORMAL, USER_DEFINED):
      types[i] = CONTROL
  for key, entry in (tok._config.get("added_tokens_decoder") or {}).items():
    i = int(key)
    if i >= len(tokens) or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
      continue
    content = entry["content"]
    if entry.get("special"):
      types[i] = CONTROL
    else:
      content, types[i] = (
        content.replace("▁", " "),
        USER_DEFINED,
      )  # llama.cpp pre-normalizes their spaces
    tokens[i], scores[i] = content, -1000.0
  sp = tok._sp
  fields = {
    "tokenizer.ggml.model": ("llama", int(V.STRING), None),
    "tokenizer.ggml.pre": ("default", int(V.STRING), None),
    "tokenizer.ggml.tokens": (tokens, int(V.ARRAY), int(V.STRING)),
    "tokenizer.ggml.scores": (scores, int(V.ARRAY), int(V.FLOAT32)),
    "tokenizer.ggml.token_type": (types, int(V.ARRAY), int(V.INT32)),
    **_scalars(tok, sp.unk_id(), bool(tok._config.get("add_eos_token", False))),
    "tokenizer.ggml.add_space_prefix": (
      bool(proto.normalizer_spec.add_dummy_prefix),
      int(V.BOOL),
      None,
    ),
  }
  if sp.pad_id() < 0:  # pad_id falls back to eos; the file then names no pad token
    fields.pop("tokenizer.ggml.padding_token_id")
  return fields


def _tokenizer_json_fields(tok: HFTokenizer) -> dict:
  """A byte-level BPE tokenizer.json as model `gpt2`; a SentencePiece-style one through the tokenizer.model
  beside it (HF Gemma checkpoints ship both)."""
  import gguf

  V = gguf.GGUFValueType
  spec = json.loads(tok._data)
  model = spec.get("model") or {}
  pre = _pre_name(spec.get("pre_tokenizer"))
  if model.get("type") != "BPE" or pre is None or spec.get("normalizer") is not None:
    sibling = os.path.join(os.path.dirname(tok.path), "tokenizer.model")
    if os.path.isfile(sibling):
      with open(sibling, "rb") as f:
        spm = SentencePieceTokenizer(f.read(), sibling, tok._config)
      return _sentencepiece_fields(spm)
    raise GemmaxError(
      f"{tok.path}: only byte-level BPE tokenizer.json files (or a tokenizer.model beside "
      "them) can be written into GGUF; this one has a different model or pre-tokenizer"
    )
  n = tok.vocab_size
  tokens = [None] * n
  for t, i in model["vocab"].items():
    if 0 <= i < n:
      tokens[i] = t
  types = [NORMAL] * n
  for entry in spec.get("added_tokens") or []:
    i = entry["id"]
    if 0 <= i < n:
      tokens[i] = entry["content"]
      types[i] = CONTROL if entry.get("special") else USER_DEFINED
  missing = [i for i, t in enumerate(tokens) if t is None]
  if missing:
    raise GemmaxError(
      f"{tok.path}: token ids {missing[:5]} have no token; cannot write the vocabulary"
    )
  merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges") or []]
  unk = model.get("unk_token")
  fields = {
    "tokenizer.ggml.model": ("gpt2", int(V.STRING), None),
    "tokenizer.ggml.pre": (pre, int(V.STRING), None),
    "tokenizer.ggml.tokens": (tokens, int(V.ARRAY), int(V.STRING)),
    "tokenizer.ggml.token_type": (types, int(V.ARRAY), int(V.INT32)),
    "tokenizer.ggml.merges": (merges, int(V.ARRAY), int(V.STRING)),
    **_scalars(
      tok, tok._tok.token_to_id(unk) if unk else None, bool(tok._config.get("add_eos_token", False))
    ),
  }
  if tok._named("pad_token", (), required=False) is None:
    fields.pop("tokenizer.ggml.padding_token_id")
  return fields


def _pre_name(pre_tok) -> str | None:
  """llama.cpp's `tokenizer.ggml.pre` for a byte-level pre-tokenizer, or None when it is not one it knows."""
  if not isinstance(pre_tok, dict):
    return None
  if pre_tok.get("type") == "ByteLevel":
    return (
      "gpt-2" if pre_tok.get("use_regex", True) and not pre_tok.get("add_prefix_space") else None
    )
  parts = pre_tok.get("pretokenizers") if pre_tok.get("type") == "Sequence" else None
  if (
    not parts
    or len(parts) != 2
    or parts[1].get("type") != "ByteLevel"
    or parts[1].get("add_prefix_space")
  ):
    return None
  first, regex = parts[0], parts[1].get("use_regex", True)
  if first.get("type") == "Digits" and first.get("individual_digits") and regex:
    return "smollm"
  if (
    first.get("type") == "Split"
    and first.get("behavior") == "Isolated"
    and not first.get("invert")
    and not regex
  ):
    return _PRE_NAME.get((first.get("pattern") or {}).get("Regex"))
  return None

"""Tokenizers behind one interface: SentencePiece `.model` files, HF `tokenizer.json` files and GGUF files.

`load_tokenizer(source)` returns a `Tokenizer` (source: a file, a directory holding one, or a registry name):

    ids = tok.encode("Hello", add_bos=True)          # list[int]
    ids, spans = tok.encode_with_offsets(text)       # spans[i] = (start, end) char offsets of token i
    text = tok.decode(ids)

Special-token strings that appear in the text (`<bos>`, `<start_of_turn>`, `<|eot_id|>`, ...) become their
ids, as in `transformers`; chat templates rely on that. Tokenizers pickle by value (the file bytes), so grain
worker processes rebuild them without touching the file system.

Every tokenizer also carries its checkpoint's `chat_template` (a jinja string, or None) and `add_bos_token` (whether
the checkpoint's own tokenizer starts a text with bos): from tokenizer_config.json / chat_template.jinja next to the
file, or from the GGUF metadata (gguf_tokenizer.py builds GGUF tokenizers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Sequence

from gemmax.errors import GemmaxError, MissingTokenError

__all__ = ["Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "load_tokenizer", "check_vocab"]


class Tokenizer:
  """Common interface. Subclasses set `_special` (piece -> id) and implement the `_encode_chunk` hooks."""

  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int  # the pad token if the tokenizer defines one, else eos_id (no tokenizer lacks an eos)
  fingerprint: (
    str  # sha256 of the tokenizer file bytes; equal fingerprints mean identical tokenizers
  )
  path: str
  chat_template: str | None  # the checkpoint's own jinja chat template, if it has one
  add_bos_token: bool  # whether the checkpoint's own tokenizer prepends bos to a text

  def __init__(self, data: bytes, path: str, config: dict | None = None):
    self._data, self.path, self._config = data, path, config or {}
    self.fingerprint = hashlib.sha256(data).hexdigest()
    self.chat_template = _template_of(self._config)
    self.add_bos_token = True
    self._build()
    specials = sorted(
      self._special, key=len, reverse=True
    )  # longest first: `<|eot_id|>` before `<|e`
    self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None

  # --- pickling by value (grain ships the pipeline to worker processes) ---
  def __getstate__(self):
    return {"data": self._data, "path": self.path, "config": self._config}

  def __setstate__(self, state):
    self.__init__(state["data"], state["path"], state["config"])

  def __repr__(self):
    return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"

  # --- public API ---
  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(self._special)

  @property
  def template_tokens(self) -> dict[str, str]:
    """Special-token strings a chat template may use: bos_token, eos_token, and unk_token / pad_token /
    sep_token / cls_token / mask_token where the tokenizer defines them."""
    out = {}
    for name in ("bos", "eos", "unk", "pad", "sep", "cls", "mask"):
      value = self._config.get(f"{name}_token")
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        out[f"{name}_token"] = value
    for name in ("bos", "eos"):
      if f"{name}_token" not in out:
        out[f"{name}_token"] = self._id_to_piece(getattr(self, f"{name}_id"))
    return out

  def token_to_id(self, token: str) -> int:
    """Id of one whole token (special or not); KeyError if the vocabulary lacks it."""
    i = self._piece_to_id(token)
    if i is None:
      raise MissingTokenError(f"token {token!r} is not in the vocabulary of {self.path}")
    return i

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    if self._special_re is None or not self._special_re.search(text):
      ids = self._encode_plain(text)  # fast path: no special-token strings in the text
    else:
      ids = self.encode_with_offsets(text)[0]
    return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

  def encode_batch(
    self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False
  ) -> list[list[int]]:
    return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (no bos/eos added) and each token's [start, end) character span in `text`."""
    ids, spans, pos = [], [], 0
    pieces = list(self._special_re.finditer(text)) if self._special_re is not None else []
    for m in pieces + [None]:
      end = m.start() if m is not None else len(text)
      if end > pos:
        chunk_ids, chunk_spans = self._encode_chunk(text[pos:end])
        ids += chunk_ids
        spans += [(pos + a, pos + b) for a, b in chunk_spans]
      if m is not None:
        ids.append(self._special[m.group()])
        spans.append((m.start(), m.end()))
        pos = m.end()
    return ids, spans

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special_tokens:
      special = set(self._special.values())
      ids = [i for i in ids if i not in special]
    return self._decode(ids)

  # --- hooks ---
  def _build(self):
    raise NotImplementedError

  def _encode_plain(self, text: str) -> list[int]:
    raise NotImplementedError

  def _encode_chunk(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    raise NotImplementedError

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def _piece_to_id(self, piece: str) -> int | None:
    raise NotImplementedError

  def _id_to_piece(self, i: int) -> str:
    raise NotImplementedError


def _template_of(config: dict) -> str | None:
  """The default chat template of a tokenizer_config.json (a string, or a list of named templates)."""
  value = config.get("chat_template")
  if isinstance(value, list):
    value = next(
      (t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None
    )
  return value if isinstance(value, str) and value.strip() else None


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (Gemma, Llama 2). Control and user-defined pieces count as special tokens."""

  def _build(self):
    import sentencepiece as spm

    self._sp = spm.SentencePieceProcessor(model_proto=self._data)
    sp = self._sp
    self.vocab_size = sp.get_piece_size()
    self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
    self._special = {
      sp.id_to_piece(i): i for i in _special_piece_ids(self._data) if i < self.vocab_size
    }
    self.add_bos_token = bool(
      self._config.get("add_bos_token", True)
    )  # Gemma and Llama 2 start with bos
    for name, i in (
      ("bos", sp.bos_id()),
      ("eos", sp.eos_id()),
      ("unk", sp.unk_id()),
      ("pad", sp.pad_id()),
    ):
      if i >= 0 and not isinstance(self._config.get(f"{name}_token"), (str, dict)):
        self._config = {**self._config, f"{name}_token": sp.id_to_piece(i)}

  def _encode_plain(self, text):
    return self._sp.encode(text)

  def _encode_chunk(self, text):
    pieces = self._sp.encode(text, return_type="proto").pieces
    ids, spans = [p.id for p in pieces], [(p.begin, p.end) for p in pieces]
    if (
      not text.isascii()
    ):  # SentencePiece reports byte offsets into the UTF-8 text; map them to chars
      b2c = _byte_to_char(text)
      spans = [(b2c[a], b2c[b]) for a, b in spans]
    return ids, spans

  def _decode(self, ids):
    return self._sp.decode(ids)

  def _piece_to_id(self, piece):
    i = self._sp.piece_to_id(piece)
    return None if (i == self._sp.unk_id() and piece != self._sp.id_to_piece(i)) else i

  def _id_to_piece(self, i):
    return self._sp.id_to_piece(i)


def _special_piece_ids(model_proto: bytes) -> list[int]:
  """Ids of CONTROL (<bos>, <eos>, <pad>) and USER_DEFINED (<start_of_turn>, ...) pieces; the Python API of
  sentencepiece has no is_user_defined, so read the piece types from the model proto."""
  from sentencepiece import sentencepiece_model_pb2 as pb

  m = pb.ModelProto()
  m.ParseFromString(model_proto)
  kinds = (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED)
  return [i for i, p in enumerate(m.pieces) if p.type in kinds]


def _byte_to_char(text: str) -> list[int]:
  """b2c[k] = index of the character that byte k of text.encode() belongs to; b2c[len(bytes)] = len(text)."""
  out = []
  for ci, ch in enumerate(text):
    out += [ci] * len(ch.encode("utf-8", "surrogatepass"))
  out.append(len(text))
  return out


class HFTokenizer(Tokenizer):
  """An HF `tokenizer.json` (Llama 3) read with the `tokenizers` library; bos/eos/pad come from the
  `tokenizer_config.json` next to it when present, else from well-known token names."""

  _BOS = ("<|begin_of_text|>", "<bos>", "<s>")
  _EOS = ("<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>")

  def _build(self):
    self._load_backend()
    self.bos_id = self._named("bos_token", self._BOS)
    self.eos_id = self._named("eos_token", self._EOS)
    pad = self._named("pad_token", (), required=False)
    self.pad_id = self.eos_id if pad is None else pad
    flag = self._config.get("add_bos_token")
    if isinstance(flag, bool):
      self.add_bos_token = flag
    else:  # no flag: the tokenizer.json's own post-processor decides, as in transformers
      self.add_bos_token = self._tok.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]

  def _load_backend(self):
    from tokenizers import Tokenizer as _Tok

    self._tok = _Tok.from_str(self._data.decode("utf-8"))
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    added = self._config.get("added_tokens_decoder", {})
    self._special = {
      t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
    }
    self._special.update({v["content"]: int(k) for k, v in added.items() if v.get("special")})

  def _named(self, key, fallbacks, required=True):
    val = self._config.get(key)
    if isinstance(val, dict):
      val = val.get("content")
    for name in ([val] if val else []) + list(fallbacks):
      i = self._tok.token_to_id(name)
      if i is not None:
        return i
    if required:
      raise GemmaxError(f"{self.path}: cannot find the {key} (set it in tokenizer_config.json)")
    return None

  def _encode_plain(self, text):
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_with_offsets(self, text):
    # `tokenizers` itself splits out added tokens (with their lstrip/rstrip rules): one call is exact.
    enc = self._tok.encode(text, add_special_tokens=False)
    return enc.ids, list(enc.offsets)

  def encode(self, text, add_bos=False, add_eos=False):
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

  def encode_batch(self, texts, add_bos=False, add_eos=False):
    # `tokenizers` batches in Rust threads; its added-token matching equals ours, so no special path.
    encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [
      ([self.bos_id] if add_bos else []) + e.ids + ([self.eos_id] if add_eos else []) for e in encs
    ]

  def _decode(self, ids):
    return self._tok.decode(ids, skip_special_tokens=False)

  def _piece_to_id(self, piece):
    return self._tok.token_to_id(piece)

  def _id_to_piece(self, i):
    return self._tok.id_to_token(i)


def load_tokenizer(source: str | os.PathLike) -> Tokenizer:
  """Loads a SentencePiece `.model`, an HF `tokenizer.json`, a `.gguf` file, a directory holding one of them
  (tokenizer.json first, then *.model, then a single *.gguf), or a registry name (`gemmax.fetch`)."""
  path = os.fspath(source)
  if not os.path.exists(path):
    from gemmax import fetch

    if fetch.is_registry_name(path):
      path = fetch.resolve(path)
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model"):
      if os.path.isfile(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    models = sorted(f for f in os.listdir(path) if f.endswith(".model"))
    if models:
      return load_tokenizer(os.path.join(path, models[0]))
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) > 1:
      raise GemmaxError(
        f"directory {path} holds several GGUF files ({', '.join(ggufs[:4])}); name one"
      )
    if ggufs:
      return load_tokenizer(os.path.join(path, ggufs[0]))
    raise FileNotFoundError(f"no tokenizer.json, *.model or *.gguf file in directory {path}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  with open(path, "rb") as f:
    head = f.read(4)
  if head == b"GGUF" or (path.endswith(".gguf") and head):
    from gemmax.data.gguf_tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(path)
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise GemmaxError(f"tokenizer file is empty: {path}")
  cfg = _config_beside(path)
  if path.endswith(".json") or data.lstrip()[:1] == b"{":
    return _parse(HFTokenizer, data, path, cfg)
  return _parse(SentencePieceTokenizer, data, path, cfg)


def _config_beside(path: str) -> dict:
  """tokenizer_config.json next to a tokenizer file (or {}), with `chat_template` taken from a
  chat_template.jinja file there when one exists (newer HF checkpoints keep it apart)."""
  folder = os.path.dirname(path)
  cfg_path = os.path.join(folder, "tokenizer_config.json")
  cfg = {}
  if os.path.isfile(cfg_path):
    with open(cfg_path, encoding="utf-8") as f:
      try:
        cfg = json.load(f)
      except ValueError as e:
        raise GemmaxError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
      raise GemmaxError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
  jinja_path = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      cfg["chat_template"] = f.read()
  return cfg


def _parse(cls, data: bytes, path: str, *args) -> Tokenizer:
  """cls(data, path, ...), with the parsers' own errors (RuntimeError, DecodeError, ...) reported as one
  GemmaxError naming the file."""
  try:
    return cls(data, path, *args)
  except ValueError:
    raise
  except Exception as e:  # noqa: BLE001 -- sentencepiece / protobuf / tokenizers raise their own types
    kind = "an HF tokenizer.json" if cls is HFTokenizer else "a SentencePiece model"
    raise GemmaxError(
      f"{path}: not {kind} ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    ) from None


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Raises if the tokenizer can emit ids the model has no embedding for (a larger model vocab is fine:
  Gemma and Llama pad their embedding tables)."""
  if tokenizer.vocab_size > model_vocab_size:
    raise GemmaxError(
      f"tokenizer {tokenizer.path} has vocab_size {tokenizer.vocab_size} but the model's "
      f"vocab_size is {model_vocab_size}: they do not fit"
    )

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

from gemmax.data.gguf_vocab import (
  GEMMA_ARCHITECTURES,
  NORMAL,
  add_named,
  byte_level,
  post_processor,
  sentencepiece,
)
from gemmax.data.tokenizer import HFTokenizer
from gemmax.errors import GemmaxError

__all__ = ["GGUFTokenizer", "load_gguf_tokenizer", "tokenizer_metadata"]


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
    spec = byte_level(
      tokens, types, get("tokenizer.ggml.merges", required=True), get("tokenizer.ggml.pre"), path
    )
  elif model == "llama":
    gemma = arch in GEMMA_ARCHITECTURES
    scores = None if gemma else get("tokenizer.ggml.scores", required=True)
    if scores is not None and len(scores) != len(tokens):
      raise GemmaxError(
        f"{path}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens"
      )
    spec = sentencepiece(
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
  add_named(spec, tokens, [i for name, i in ids.items() if i is not None])
  spec["post_processor"] = post_processor(tokens, ids, bool(add_bos), add_eos)
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

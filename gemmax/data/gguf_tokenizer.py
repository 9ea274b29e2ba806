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

Writing puts every `tokenizer.ggml.*` key and `tokenizer.chat_template` into a GGUFWriter so that llama.cpp and
transformers rebuild the same tokenizer: a GGUF tokenizer writes its file's fields back unchanged; a SentencePiece
`.model` writes model `llama` (tokens, scores, types as llama.cpp's convert_hf_to_gguf.py does); a byte-level BPE
tokenizer.json writes model `gpt2` with its merges and the `pre` name of its split regex.
"""

from __future__ import annotations

import json
import os

from gemmax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer
from gemmax.errors import GemmaxError

__all__ = ["GGUFTokenizer", "load_gguf_tokenizer", "write_tokenizer", "tokenizer_metadata"]

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# `tokenizer.ggml.pre` -> split regex applied before byte-level BPE (transformers' table; the names are llama.cpp's).
PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    "tekken": _TEKKEN,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}
# the name written for a tokenizer.json whose split regex is one of these
_PRE_NAME = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2", _QWEN35: "qwen35", _TEKKEN: "tekken", _GPT4O: "gpt-4o"}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 byte values (byte-level BPE vocabularies are written in it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
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
        raise GemmaxError(f"{path}: cannot build a tokenizer from its metadata ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None


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
    return {key: (value, int(vtype), None if sub is None else int(sub))
            for key, (value, vtype, sub) in reader.fields.items() if _wanted(key)}


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
        raise GemmaxError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    arch = get("general.architecture", "")
    add_bos = get("tokenizer.ggml.add_bos_token", model == "llama")  # llama.cpp's default for SentencePiece
    add_eos = bool(get("tokenizer.ggml.add_eos_token", False))
    ids = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        i = get(f"tokenizer.ggml.{key}")
        if i is not None and not 0 <= int(i) < len(tokens):
            raise GemmaxError(f"{path}: tokenizer.ggml.{key} = {i} is outside the {len(tokens)}-token vocabulary")
        ids[name] = None if i is None else int(i)

    if model == "gpt2":
        spec = _byte_level(tokens, types, get("tokenizer.ggml.merges", required=True), get("tokenizer.ggml.pre"),
                           path)
    elif model == "llama":
        gemma = arch in GEMMA_ARCHITECTURES
        scores = None if gemma else get("tokenizer.ggml.scores", required=True)
        if scores is not None and len(scores) != len(tokens):
            raise GemmaxError(f"{path}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
        spec = _sentencepiece(tokens, types, scores, arch, bool(get("tokenizer.ggml.add_space_prefix", True)))
    else:
        raise GemmaxError(f"{path}: tokenizer.ggml.model = {model!r} is not supported (gemmax reads 'gpt2' "
                          "byte-level BPE and 'llama' SentencePiece-style vocabularies)")

    for name in ("bos", "eos"):  # files without the id: the usual names, as HFTokenizer does
        if ids[name] is None:
            fallback = HFTokenizer._BOS if name == "bos" else HFTokenizer._EOS
            ids[name] = next((tokens.index(t) for t in fallback if t in tokens), None)
    if ids["eos"] is None:
        raise GemmaxError(f"{path}: metadata lacks tokenizer.ggml.eos_token_id and no usual eos token is in the "
                          "vocabulary")
    if ids["bos"] is None:
        ids["bos"] = ids["eos"]
    _add_named(spec, tokens, [i for name, i in ids.items() if i is not None])
    spec["post_processor"] = _post_processor(tokens, ids, bool(add_bos), add_eos)
    data = json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    config = {f"{name}_token": tokens[i] for name, i in ids.items() if i is not None}
    config.update({f"{name}_token_id": i for name, i in ids.items()})
    config.update(add_bos_token=bool(add_bos), add_eos_token=add_eos, chat_template=get("tokenizer.chat_template"),
                  gguf=meta)
    return data, config


def _added(tokens, types, keep) -> list[dict]:
    """Added-token entries: control tokens special, user-defined ones plain, where keep(token, type) says so."""
    out = []
    for i, (t, k) in enumerate(zip(tokens, types)):
        if k in (CONTROL, USER_DEFINED) and keep(t, k):
            out.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": k == CONTROL})
    return out


def _add_named(spec: dict, tokens: list[str], ids: list[int]) -> None:
    """bos / eos / unk / pad become special added tokens even when the file types them otherwise (an UNKNOWN
    `<unk>`): transformers registers them so, and llama.cpp matches UNKNOWN-typed tokens whole as well."""
    vocab, entries = spec["model"]["vocab"], {e["id"]: e for e in spec["added_tokens"]}
    for i in ids:
        if vocab.get(tokens[i]) == i:  # only tokens the vocabulary spells as the file does
            entries[i] = {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}
    spec["added_tokens"] = [entries[i] for i in sorted(entries)]


def _byte_level(tokens, types, merges, pre, path) -> dict:
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {}
    for i, t in enumerate(tokens):  # a token outside the byte alphabet is spelled in it (later duplicates win)
        vocab[t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))] = i
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise GemmaxError(f"{path}: tokenizer.ggml.merges holds {m!r}, not two tokens separated by a space")
        pairs.append([left, right])
    # A control token written outside the byte alphabet is a converter's mislabel: adding it would grow the
    # vocabulary past the model's, so (as transformers) it stays a plain vocabulary entry.
    added = _added(tokens, types, lambda t, k: set(t) <= spelled if k == CONTROL else t in vocab)
    if pre == "smollm":  # SmolLM's tokenizer.json (and llama.cpp): digits one by one, then the GPT-2 regex
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    elif pre in PRE_SPLITS:
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_SPLITS[pre]}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    else:
        pre_tok = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre_tok, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": pairs}}


def _sentencepiece(tokens, types, scores, arch, add_space_prefix) -> dict:
    gemma, original = arch in GEMMA_ARCHITECTURES, tokens
    if gemma:  # Gemma files store space-run tokens ("  ") as spaces; the tokenizer looks them up as "▁▁"
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks = range(0, -len(tokens), -1)  # file order is merge order
    else:
        ranks = scores
    vocab = {t: i for i, t in enumerate(tokens)}
    # a user-defined token is added as the file spells it, and only when the vocabulary knows that spelling
    added = _added(original, types, lambda t, k: k == CONTROL or t in vocab)
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]
    space = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    if gemma:
        normalizer = space
        pre_tok = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    else:  # Llama 2 style: "▁" before every stretch of text, as sentencepiece and llama.cpp do. transformers uses
        # Metaspace(prepend_scheme="first") here (phi3 aside), which adds none before text that starts with a space
        # or follows a special token: "  a" is "▁▁▁a" in sentencepiece and "▁▁a" there.
        prefix = [{"type": "Prepend", "prepend": "▁"}] if add_space_prefix else []
        normalizer, pre_tok = {"type": "Sequence", "normalizers": prefix + [space]}, None
    if not gemma and add_space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre_tok, "post_processor": None, "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>" if gemma else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": derived_merges(tokens, ranks)}}


def derived_merges(tokens: list[str], ranks) -> list[list[str]]:
    """Merges implied by a vocabulary: each split of a token into two vocabulary tokens, ordered by the token's
    rank (higher first), then longer left part, then longer right part; ties keep the order of the tokens and of
    the parts' ids. Same order as transformers' `generate_merges` (a token listed twice takes its last rank and
    id, as in a dict built from the list)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    rank = list(dict(zip(tokens, ranks)).items())
    if all(a[1] > b[1] for a, b in zip(rank, rank[1:])):  # no ties, already best first (Gemma: file order)
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
        splits = sorted((vocab[t[:k]], vocab[t[k:]], k) for k in range(1, len(t))
                        if t[:k] in vocab and t[k:] in vocab)
        found += [(r, k, len(t) - k, t[:k], t[k:]) for _, _, k in splits]
    found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)  # stable, like sorted(..., reverse=True)
    return [[m[3], m[4]] for m in found]


def _post_processor(tokens, ids, add_bos, add_eos) -> dict:
    """TemplateProcessing that adds bos / eos as the checkpoint does (gemmax itself asks for them explicitly)."""
    ends = [(name, ids[name]) for name, flag in (("bos", add_bos), ("eos", add_eos)) if flag]
    special = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for _, i in ends}

    def template(seq, type_id):
        out = [{"SpecialToken": {"id": tokens[i], "type_id": type_id}} for name, i in ends if name == "bos"]
        out.append({"Sequence": {"id": seq, "type_id": type_id}})
        return out + [{"SpecialToken": {"id": tokens[i], "type_id": type_id}} for name, i in ends if name == "eos"]

    return {"type": "TemplateProcessing", "single": template("A", 0), "pair": template("A", 0) + template("B", 1),
            "special_tokens": special}


# --- writing ------------------------------------------------------------------------------------------------------

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
        raise GemmaxError(f"tokenizer {tokenizer.path} has {n} tokens but the model's vocab_size is {vocab_size}")
    if vocab_size is not None and vocab_size > n:
        pads = {"tokenizer.ggml.tokens": [f"[PAD{i}]" for i in range(n, vocab_size)],
                "tokenizer.ggml.scores": [-1000.0] * (vocab_size - n),
                "tokenizer.ggml.token_type": [UNUSED] * (vocab_size - n)}
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
    out = {"tokenizer.ggml.bos_token_id": tokenizer.bos_id, "tokenizer.ggml.eos_token_id": tokenizer.eos_id}
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
    kinds = {pb.ModelProto.SentencePiece.NORMAL: NORMAL, pb.ModelProto.SentencePiece.UNKNOWN: UNKNOWN,
             pb.ModelProto.SentencePiece.CONTROL: CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED: USER_DEFINED,
             pb.ModelProto.SentencePiece.UNUSED: UNUSED, pb.ModelProto.SentencePiece.BYTE: BYTE}
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [kinds.get(p.type, NORMAL) for p in proto.pieces]
    named = {t.get("content") if isinstance(t, dict) else t  # HF's GemmaTokenizer: turn markers are special
             for t in tok._config.get("additional_special_tokens") or []}
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
            content, types[i] = content.replace("▁", " "), USER_DEFINED  # llama.cpp pre-normalizes their spaces
        tokens[i], scores[i] = content, -1000.0
    sp = tok._sp
    fields = {
        "tokenizer.ggml.model": ("llama", int(V.STRING), None),
        "tokenizer.ggml.pre": ("default", int(V.STRING), None),
        "tokenizer.ggml.tokens": (tokens, int(V.ARRAY), int(V.STRING)),
        "tokenizer.ggml.scores": (scores, int(V.ARRAY), int(V.FLOAT32)),
        "tokenizer.ggml.token_type": (types, int(V.ARRAY), int(V.INT32)),
        **_scalars(tok, sp.unk_id(), bool(tok._config.get("add_eos_token", False))),
        "tokenizer.ggml.add_space_prefix": (bool(proto.normalizer_spec.add_dummy_prefix), int(V.BOOL), None),
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
        raise GemmaxError(f"{tok.path}: only byte-level BPE tokenizer.json files (or a tokenizer.model beside "
                          "them) can be written into GGUF; this one has a different model or pre-tokenizer")
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
        raise GemmaxError(f"{tok.path}: token ids {missing[:5]} have no token; cannot write the vocabulary")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges") or []]
    unk = model.get("unk_token")
    fields = {
        "tokenizer.ggml.model": ("gpt2", int(V.STRING), None),
        "tokenizer.ggml.pre": (pre, int(V.STRING), None),
        "tokenizer.ggml.tokens": (tokens, int(V.ARRAY), int(V.STRING)),
        "tokenizer.ggml.token_type": (types, int(V.ARRAY), int(V.INT32)),
        "tokenizer.ggml.merges": (merges, int(V.ARRAY), int(V.STRING)),
        **_scalars(tok, tok._tok.token_to_id(unk) if unk else None, bool(tok._config.get("add_eos_token", False))),
    }
    if tok._named("pad_token", (), required=False) is None:
        fields.pop("tokenizer.ggml.padding_token_id")
    return fields


def _pre_name(pre_tok) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level pre-tokenizer, or None when it is not one it knows."""
    if not isinstance(pre_tok, dict):
        return None
    if pre_tok.get("type") == "ByteLevel":
        return "gpt-2" if pre_tok.get("use_regex", True) and not pre_tok.get("add_prefix_space") else None
    parts = pre_tok.get("pretokenizers") if pre_tok.get("type") == "Sequence" else None
    if not parts or len(parts) != 2 or parts[1].get("type") != "ByteLevel" or parts[1].get("add_prefix_space"):
        return None
    first, regex = parts[0], parts[1].get("use_regex", True)
    if first.get("type") == "Digits" and first.get("individual_digits") and regex:
        return "smollm"
    if first.get("type") == "Split" and first.get("behavior") == "Isolated" and not first.get("invert") and not regex:
        return _PRE_NAME.get((first.get("pattern") or {}).get("Regex"))
    return None

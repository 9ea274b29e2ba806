"""gemmax.data tokenizers give the same ids as transformers' tokenizers on the same (self-trained) files."""

import os
import pickle  # only to check that tokenizers survive the trip to grain worker processes (our own objects)
import shutil

import pytest
from test_data_fixtures import TRICKY, gemma_spm, llama2_spm, llama3_json  # noqa: F401

from gemmax.data import check_vocab, load_tokenizer

CHATTY = TRICKY + [
  "<bos>Hi<start_of_turn>user\nx = 42<end_of_turn>\n<start_of_turn>model\nök<end_of_turn>\n"
]


def test_gemma_spm_matches_transformers(gemma_spm):
  from transformers import GemmaTokenizer

  hf = GemmaTokenizer.from_pretrained(os.path.dirname(gemma_spm))
  tok = load_tokenizer(gemma_spm)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
  for text in CHATTY:
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
    assert tok.encode(text, add_bos=True)[0] == hf.bos_token_id
  assert tok.token_to_id("<start_of_turn>") == hf.convert_tokens_to_ids("<start_of_turn>")
  assert tok.encode_batch(TRICKY, add_bos=True, add_eos=True) == [
    tok.encode(t, True, True) for t in TRICKY
  ]


def test_digits_split_and_byte_fallback(gemma_spm):
  tok = load_tokenizer(gemma_spm)
  pieces = [tok._sp.id_to_piece(i) for i in tok.encode("12345")]
  assert pieces == ["1", "2", "3", "4", "5"]
  ids = tok.encode("日本")  # not in the tiny vocab: UTF-8 bytes
  assert all(tok._sp.is_byte(i) for i in ids) and len(ids) == 6
  for text in TRICKY:
    assert tok.decode(tok.encode(text)) == text


def test_llama2_spm_matches_transformers(llama2_spm):
  from transformers import LlamaTokenizer

  hf = LlamaTokenizer.from_pretrained(os.path.dirname(llama2_spm))
  tok = load_tokenizer(llama2_spm)
  assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=llama2_spm)
  for text in TRICKY:
    assert tok.encode(text) == sp.encode(text), text
    if text.startswith(" "):
      # transformers 5 converts dummy-prefix models with Metaspace(prepend_scheme="first"), which adds no
      # extra "▁" before a leading space; sentencepiece (Meta's reference) does. We follow sentencepiece.
      continue
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text


def test_tokenizer_json_matches_transformers(llama3_json):
  from transformers import PreTrainedTokenizerFast

  hf = PreTrainedTokenizerFast(
    tokenizer_file=llama3_json, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
  )
  tok = load_tokenizer(
    os.path.dirname(llama3_json)
  )  # the directory form reads tokenizer_config.json too
  assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id)
  texts = TRICKY + [
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n日本 42<|eot_id|>"
  ]
  for text in texts:
    assert tok.encode(text, add_bos=True) == hf.encode(text), text
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == hf.decode(
      hf.encode(text, add_special_tokens=False)
    )
  assert tok.encode_batch(texts, add_bos=True) == [hf.encode(t) for t in texts]
  assert tok.token_to_id("<|eot_id|>") == hf.convert_tokens_to_ids("<|eot_id|>")


def test_offsets_cover_text(gemma_spm, llama3_json):
  for path in (gemma_spm, llama3_json):
    tok = load_tokenizer(path)
    text = "é日 x<start_of_turn>12 ok<|eot_id|>"
    ids, spans = tok.encode_with_offsets(text)
    assert ids == tok.encode(text) and len(spans) == len(ids)
    assert all(0 <= a <= b <= len(text) for a, b in spans)
    assert spans[-1][1] == len(text)


def test_fingerprint_pickle_and_errors(gemma_spm, llama2_spm, tmp_path):
  a, b = load_tokenizer(gemma_spm), load_tokenizer(llama2_spm)
  assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 64
  shutil.copy(gemma_spm, tmp_path / "copy.model")
  assert load_tokenizer(tmp_path / "copy.model").fingerprint == a.fingerprint
  c = pickle.loads(pickle.dumps(a))
  assert c.encode("héllo 123") == a.encode("héllo 123") and c.fingerprint == a.fingerprint
  with pytest.raises(KeyError, match="<nope>"):
    a.token_to_id("<nope>")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    load_tokenizer(tmp_path / "missing.model")
  (tmp_path / "empty.model").write_bytes(b"")
  with pytest.raises(ValueError, match="empty.model"):
    load_tokenizer(tmp_path / "empty.model")
  check_vocab(a, 1000)
  check_vocab(a, 1024)
  with pytest.raises(ValueError, match=r"1000.*999"):
    check_vocab(a, 999)

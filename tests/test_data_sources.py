"""Sources: JSONL/CSV/Parquet reading, field mapping, bad-row reporting, missing/empty files, tfds extra."""

import dataclasses
import sys
import json

import pytest

from test_data_fixtures import gemma_spm  # noqa: F401

from gemmax.data import SourceSpec, load_records


def _jsonl(path, lines):
  with open(path, "wb") as f:
    for line in lines:
      f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
      f.write(b"\n")
  return str(path)


GOOD = {"instruction": "Say hi", "input": "", "output": "hi"}


def test_jsonl_bad_rows_reported_with_line_numbers(tmp_path):
  path = _jsonl(
    tmp_path / "d.jsonl",
    [
      GOOD,  # 1
      {"instruction": "x"},  # 2 missing output
      {"instruction": "x", "output": 5},  # 3 non-string
      {"instruction": "x", "output": "   "},  # 4 empty response
      b'{"instruction": "x", "output": "caf\xe9"}',  # 5 invalid UTF-8 (latin-1 byte)
      b"",  # 6 blank line: ignored
      b"{not json",  # 7
      {"instruction": "ok", "output": "fine", "input": "ctx"},  # 8
    ],
  )
  recs, bad = load_records(SourceSpec(path, kind="alpaca"))
  assert recs == [GOOD, {"instruction": "ok", "input": "ctx", "output": "fine"}]
  assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
    (2, "missing field"),
    (3, "non-string"),
    (4, "empty response"),
    (5, "invalid UTF-8"),
    (7, "invalid JSON"),
  ]
  assert bad.count == 5 and bad.counts["missing field"] == 1
  assert "d.jsonl row 2: missing field: 'output'" in bad.summary()
  with pytest.raises(ValueError, match=r"d.jsonl.*row 2: missing field"):
    load_records(SourceSpec(path, kind="alpaca"), on_bad_rows="fail")


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    load_records(SourceSpec(str(tmp_path / "nope.jsonl")))
  (tmp_path / "empty.jsonl").write_bytes(b"")
  with pytest.raises(ValueError, match="empty.jsonl"):
    load_records(SourceSpec(str(tmp_path / "empty.jsonl")))
  blank = _jsonl(tmp_path / "blank.jsonl", [b"", b"  "])
  with pytest.raises(ValueError, match="no valid rows in .*blank.jsonl"):
    load_records(SourceSpec(blank))
  with pytest.raises(FileNotFoundError, match=r"no data files match .*\*.parquet"):
    load_records(SourceSpec(str(tmp_path / "*.parquet")))


def test_csv_classification_with_field_names(tmp_path):
  path = tmp_path / "c.csv"
  path.write_bytes(
    b"sentence,y\n"
    b"great film,1\n"
    b"\"awful, just awful\",0\n"
    b"bad bytes \xff\xfe,1\n"
    b"no label,\n"
    b"unknown label,7\n"
  )
  spec = SourceSpec(
    str(path),
    kind="classification",
    fields={"text": "sentence", "label": "y"},
    instruction="Is the review positive?",
    label_words=["no", "yes"],
  )
  recs, bad = load_records(spec)
  assert recs == [
    {"instruction": "Is the review positive?", "input": "great film", "output": "yes"},
    {"instruction": "Is the review positive?", "input": "awful, just awful", "output": "no"},
  ]
  assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
    (3, "invalid UTF-8"),
    (4, "bad label"),
    (5, "bad label"),
  ]


def test_parquet_chat_and_text(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
  pq.write_table(
    pa.table({"conversation": [json.dumps(msgs), json.dumps(msgs[:1]), "[]"]}),
    tmp_path / "c.parquet",
  )
  recs, bad = load_records(
    SourceSpec(str(tmp_path / "c.parquet"), kind="chat", fields={"messages": "conversation"})
  )
  assert recs == [{"messages": msgs}]
  assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
    (2, "empty response"),
    (3, "bad messages"),
  ]
  pq.write_table(pa.table({"text": ["a b c", None, ""]}), tmp_path / "t.parquet")
  recs, bad = load_records(SourceSpec(str(tmp_path / "t.parquet"), kind="text"))
  assert recs == [{"text": "a b c"}] and [n for _, n, _ in bad.rows] == [2, 3]


def test_chat_turns_the_template_rejects_are_bad_rows(tmp_path):
  hi, hello = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
  path = _jsonl(
    tmp_path / "c.jsonl",
    [
      {"messages": [hi, hello]},
      {"messages": [hello, hi, hello]},
      {"messages": [{"role": "human", "content": "hi"}, hello]},
    ],
  )
  recs, bad = load_records(SourceSpec(path, kind="chat"))
  assert recs == [{"messages": [hi, hello]}]
  assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
    (2, "bad messages"),
    (3, "bad messages"),
  ]
  assert "must alternate" in bad.rows[0][2] and "role 'human'" in bad.rows[1][2]
  assert (
    len(load_records(SourceSpec(path, kind="chat", template="llama3"))[0]) == 2
  )  # llama3: any order
  with pytest.raises(ValueError, match="chat template 'chatml'"):
    SourceSpec(path, kind="chat", template="chatml")


def test_several_files_and_glob(tmp_path):
  _jsonl(tmp_path / "a.jsonl", [GOOD])
  _jsonl(tmp_path / "b.jsonl", [GOOD, GOOD])
  recs, _ = load_records(SourceSpec(str(tmp_path / "*.jsonl")))
  assert len(recs) == 3


def test_tfds_missing_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
  with pytest.raises(ImportError, match=r"gemmax\[tfds\]"):
    load_records(
      SourceSpec("imdb_reviews", kind="classification", format="tfds", label_words=["neg", "pos"])
    )


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A 3-row dataset prepared locally as array_record by a tfds builder (no downloads, no tensorflow)."""
  import tensorflow_datasets as tfds  # a test dependency (pyproject [test]): never skipped

  class GemmaxTinyReviews(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    disable_shuffling = True  # rows stay in generation order, so row numbers are predictable

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["neg", "pos"]),
            "answer": tfds.features.Text(),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      rows = [("great film", 1, "yes"), ("awful", 0, ""), (b"bad \xff", 1, "no")]
      for i, (text, label, answer) in enumerate(rows):
        yield i, {"text": text, "label": label, "answer": answer}

  d = str(tmp_path_factory.mktemp("tfds"))
  builder = GemmaxTinyReviews(data_dir=d, file_format="array_record")
  builder.download_and_prepare()
  return d, builder.data_dir


def test_tfds_source(tfds_dir):
  data_dir, version_dir = tfds_dir
  spec = SourceSpec(
    "gemmax_tiny_reviews",
    kind="classification",
    format="tfds",
    data_dir=data_dir,
    instruction="Positive?",
    label_words=["no", "yes"],
  )
  recs, bad = load_records(spec)
  assert recs == [
    {"instruction": "Positive?", "input": "great film", "output": "yes"},
    {"instruction": "Positive?", "input": "awful", "output": "no"},
  ]
  assert bad.rows == [("tfds:gemmax_tiny_reviews[train]", 3, "invalid UTF-8: field 'text'")]
  # the directory of a prepared version works too; other columns through `fields`
  alpaca = SourceSpec(
    version_dir, format="tfds", fields={"instruction": "text", "output": "answer"}
  )
  recs, bad = load_records(alpaca)
  assert recs == [{"instruction": "great film", "input": "", "output": "yes"}]
  assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
    (2, "empty response"),
    (3, "invalid UTF-8"),
  ]
  with pytest.raises(ValueError, match=r"tfds:gemmax_tiny_reviews\[test\].*Unknown split"):
    load_records(dataclasses.replace(spec, split="test"))
  with pytest.raises(
    FileNotFoundError, match=r"'gemmax_no_such_set' not found under data_dir .*tfds"
  ):
    load_records(dataclasses.replace(spec, path="gemmax_no_such_set"))
  with pytest.raises(
    FileNotFoundError, match=r"'imdb_reviews' is not prepared in .*does not download"
  ):
    load_records(
      dataclasses.replace(spec, path="imdb_reviews")
    )  # a registered name: never downloaded


def test_tfds_source_in_pipeline(tfds_dir, gemma_spm):
  from gemmax.data import DataConfig, load_tokenizer, make_pipeline

  spec = SourceSpec(
    "gemmax_tiny_reviews",
    kind="classification",
    format="tfds",
    data_dir=tfds_dir[0],
    label_words=["no", "yes"],
  )
  it = make_pipeline(
    spec, load_tokenizer(gemma_spm), DataConfig(seq_len=128, batch_size=2, prefetch=0)
  )
  b = next(it)
  assert b["input_ids"].shape == (2, 128) and b["loss_mask"].sum() > 0 and it.bad_rows.count == 1


def test_bad_spec():
  with pytest.raises(ValueError, match="kind"):
    SourceSpec("x.jsonl", kind="dialog")
  with pytest.raises(ValueError, match="label_words"):
    SourceSpec("x.csv", kind="classification")
  with pytest.raises(ValueError, match="on_bad_rows"):
    load_records(SourceSpec("x.jsonl"), on_bad_rows="ignore")

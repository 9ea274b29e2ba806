"""Sources: JSONL/CSV/Parquet reading, field mapping, bad-row reporting, missing/empty files, tfds extra."""

import importlib.util
import json

import pytest

from gemmax.data import SourceSpec, load_records


def _jsonl(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            f.write(b"\n")
    return str(path)


GOOD = {"instruction": "Say hi", "input": "", "output": "hi"}


def test_jsonl_bad_rows_reported_with_line_numbers(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [
        GOOD,                                                      # 1
        {"instruction": "x"},                                      # 2 missing output
        {"instruction": "x", "output": 5},                         # 3 non-string
        {"instruction": "x", "output": "   "},                     # 4 empty response
        b'{"instruction": "x", "output": "caf\xe9"}',              # 5 invalid UTF-8 (latin-1 byte)
        b"",                                                       # 6 blank line: ignored
        b"{not json",                                              # 7
        {"instruction": "ok", "output": "fine", "input": "ctx"},   # 8
    ])
    recs, bad = load_records(SourceSpec(path, kind="alpaca"))
    assert recs == [GOOD, {"instruction": "ok", "input": "ctx", "output": "fine"}]
    assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [
        (2, "missing field"), (3, "non-string"), (4, "empty response"), (5, "invalid UTF-8"), (7, "invalid JSON")]
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
    path.write_bytes(b"sentence,y\n"
                     b"great film,1\n"
                     b"\"awful, just awful\",0\n"
                     b"bad bytes \xff\xfe,1\n"
                     b"no label,\n"
                     b"unknown label,7\n")
    spec = SourceSpec(str(path), kind="classification", fields={"text": "sentence", "label": "y"},
                      instruction="Is the review positive?", label_words=["no", "yes"])
    recs, bad = load_records(spec)
    assert recs == [{"instruction": "Is the review positive?", "input": "great film", "output": "yes"},
                    {"instruction": "Is the review positive?", "input": "awful, just awful", "output": "no"}]
    assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [(3, "invalid UTF-8"), (4, "bad label"), (5, "bad label")]


def test_parquet_chat_and_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pq.write_table(pa.table({"conversation": [json.dumps(msgs), json.dumps(msgs[:1]), "[]"]}), tmp_path / "c.parquet")
    recs, bad = load_records(SourceSpec(str(tmp_path / "c.parquet"), kind="chat", fields={"messages": "conversation"}))
    assert recs == [{"messages": msgs}]
    assert [(n, r.split(":")[0]) for _, n, r in bad.rows] == [(2, "empty response"), (3, "bad messages")]
    pq.write_table(pa.table({"text": ["a b c", None, ""]}), tmp_path / "t.parquet")
    recs, bad = load_records(SourceSpec(str(tmp_path / "t.parquet"), kind="text"))
    assert recs == [{"text": "a b c"}] and [n for _, n, _ in bad.rows] == [2, 3]


def test_several_files_and_glob(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [GOOD])
    _jsonl(tmp_path / "b.jsonl", [GOOD, GOOD])
    recs, _ = load_records(SourceSpec(str(tmp_path / "*.jsonl")))
    assert len(recs) == 3


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None, reason="tfds is installed")
def test_tfds_missing_is_a_clear_error():
    with pytest.raises(ImportError, match=r"gemmax\[tfds\]"):
        load_records(SourceSpec("imdb_reviews", kind="classification", format="tfds", label_words=["neg", "pos"]))


def test_bad_spec():
    with pytest.raises(ValueError, match="kind"):
        SourceSpec("x.jsonl", kind="dialog")
    with pytest.raises(ValueError, match="label_words"):
        SourceSpec("x.csv", kind="classification")
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_records(SourceSpec("x.jsonl"), on_bad_rows="ignore")

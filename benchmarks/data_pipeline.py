"""Data pipeline throughput: gemmax.data grain pipeline (packing on) vs bare SentencePiece encoding.

    python benchmarks/data_pipeline.py [--tokenizer checkpoints/gemmax-tiny/tokenizer.model] [--train-tokenizer]

Corpus: Python stdlib docstrings (no downloads), as Alpaca records (first docstring line = instruction,
the rest = output) and as plain text. Reports tokens/s, where a token is a non-padding slot of a batch
(segment_ids > 0), and the peer in the same run: `SentencePieceProcessor.encode` over the same strings
(tokenization only: no templates, masks, packing or batching), i.e. the ceiling for a single process.
With --train-tokenizer a SentencePiece BPE (vocab 8192, split_digits, byte_fallback) is trained on the
corpus first and used instead of --tokenizer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time


def corpus_docs(n_chars: int) -> list[str]:
    docs, total = [], 0
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for obj in [mod] + [getattr(mod, a, None) for a in sorted(dir(mod))[:300]]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80 and "\n" in doc.strip():
                docs.append(doc.strip())
                total += len(doc)
        if total > n_chars:
            break
    return docs


def write_data(docs, d):
    with open(os.path.join(d, "alpaca.jsonl"), "w") as f:
        for doc in docs:
            first, rest = doc.split("\n", 1)
            f.write(json.dumps({"instruction": first, "input": "", "output": rest.strip() or first}) + "\n")
    with open(os.path.join(d, "text.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)


def train_tokenizer(docs, d) -> str:
    import sentencepiece as spm

    with open(os.path.join(d, "corpus.txt"), "w") as f:
        f.write("\n".join(docs))
    spm.SentencePieceTrainer.train(
        input=os.path.join(d, "corpus.txt"), model_prefix=os.path.join(d, "tokenizer"), vocab_size=8192,
        model_type="bpe", split_digits=True, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2, num_threads=2, max_sentence_length=1 << 16)
    return os.path.join(d, "tokenizer.model")


def time_pipeline(spec, tok, cfg, batches: int):
    from gemmax.data import make_pipeline

    it = make_pipeline(spec, tok, cfg)
    next(it)  # start-up (worker spawn, first fill) is not throughput
    t0, tokens, slots = time.perf_counter(), 0, 0
    for _ in range(batches):
        b = next(it)
        tokens += int((b["segment_ids"] > 0).sum())
        slots += b["segment_ids"].size
    dt = time.perf_counter() - t0
    it.close()
    return tokens / dt, tokens / slots


def time_spm(path, texts, repeats=3):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    t0, n = time.perf_counter(), 0
    for _ in range(repeats):
        n += sum(map(len, sp.encode(texts)))
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="checkpoints/gemmax-tiny/tokenizer.model")
    ap.add_argument("--train-tokenizer", action="store_true")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--chars", type=int, default=3_000_000)
    args = ap.parse_args()

    from gemmax.data import DataConfig, SourceSpec, load_tokenizer

    d = tempfile.mkdtemp()
    docs = corpus_docs(args.chars)
    write_data(docs, d)
    path = train_tokenizer(docs, d) if args.train_tokenizer else args.tokenizer
    tok = load_tokenizer(path)
    print(f"tokenizer {path if not args.train_tokenizer else 'trained here'} vocab {tok.vocab_size}; "
          f"{len(docs)} docs, {sum(map(len, docs))} chars; batch [{args.batch_size}, {args.seq_len}]")
    rows = []
    peer = time_spm(path, docs)
    rows.append(("sentencepiece encode only (peer)", "-", peer, None))
    for kind in ("text", "alpaca"):
        for w in args.workers:
            cfg = DataConfig(seq_len=args.seq_len, batch_size=args.batch_size, seed=0, packing=True,
                             worker_count=w, prefetch=4)
            tps, fill = time_pipeline(SourceSpec(os.path.join(d, f"{kind}.jsonl"), kind=kind), tok, cfg, args.batches)
            rows.append((f"gemmax pipeline, {kind}, packing", w, tps, fill))
    print("| pipeline | workers | tokens/s | ratio to peer | packed fill |")
    print("|---|---|---|---|---|")
    for name, w, tps, fill in rows:
        print(f"| {name} | {w} | {tps:,.0f} | {tps / peer:.2f} | {'-' if fill is None else f'{fill:.1%}'} |")


if __name__ == "__main__":
    main()

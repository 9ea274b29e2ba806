"""grain pipelines: records -> shuffled, sharded, tokenized, packed [batch, seq_len] batches.

    it = make_pipeline(SourceSpec("train.jsonl", kind="alpaca"), tokenizer, DataConfig(seq_len=512, batch_size=8))
    batch = next(it)              # dict of int32 numpy arrays [8, 512]; contract in gemmax/data/__init__.py
    state = it.get_state()        # JSON-serialisable; it.set_state(state) on a fresh pipeline resumes exactly

Order of operations (grain MapDataset -> IterDataset):
  source records -> this process's shard (records[process_index::process_count]) -> seeded shuffle (a new
  order each epoch) -> repeat(num_epochs) -> tokenize + shift + truncate (in grain worker processes when
  worker_count > 0) -> first-fit packing (or padding) -> batch -> prefetch.
Each example is shifted on its own (targets = ids[1:]) before packing, so no target crosses an example border.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from gemmax.data.formats import tokenize_example
from gemmax.data.sources import BadRows, SourceSpec, load_records

__all__ = ["DataConfig", "make_dataset", "make_pipeline", "DataIterator"]

KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """seq_len/batch_size: per-process batch shape [batch_size, seq_len]. truncate: "right" keeps the start of
    a too-long example, "left" keeps its end, "drop" skips it. num_epochs=None repeats forever.
    num_packing_bins: rows the first-fit packer fills at once (default batch_size). worker_count > 0
    tokenizes and packs in that many grain worker processes; prefetch is the buffer of ready batches.
    process_index/process_count default to jax.process_index()/jax.process_count()."""

    seq_len: int = 512
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    packing: bool = True
    num_packing_bins: int | None = None
    truncate: str = "right"
    drop_unsupervised: bool = True  # skip examples left with no target token after truncation
    worker_count: int = 0
    read_threads: int = 2  # threads tokenizing ahead inside each process (grain ReadOptions)
    prefetch: int = 2
    on_bad_rows: str = "skip"
    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self):
        if self.truncate not in ("right", "left", "drop"):
            raise ValueError(f"truncate must be 'right', 'left' or 'drop', got {self.truncate!r}")
        if self.seq_len < 2 or self.batch_size < 1:
            raise ValueError(f"need seq_len >= 2 and batch_size >= 1, got {self.seq_len}, {self.batch_size}")


class _Tokenize:
    """record -> {"input_ids", "targets", "loss_mask"} of length <= seq_len, or None to skip. A class (not a
    closure) so grain can ship it, tokenizer included, to worker processes."""

    def __init__(self, tokenizer, seq_len: int, truncate: str, drop_unsupervised: bool):
        self.tokenizer, self.seq_len, self.truncate, self.drop_unsupervised = tokenizer, seq_len, truncate, drop_unsupervised

    def __call__(self, item):
        kind, template, record = item
        ids, mask = tokenize_example(self.tokenizer, record, kind, template)
        ex = {"input_ids": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}
        n, T = len(ex["input_ids"]), self.seq_len
        if n == 0 or (n > T and self.truncate == "drop"):
            return None
        if n > T:
            sl = slice(0, T) if self.truncate == "right" else slice(n - T, n)
            ex = {k: v[sl] for k, v in ex.items()}
        if self.drop_unsupervised and not ex["loss_mask"].any():
            return None
        return ex


class _Pad:
    """One example per row: pad to seq_len; segment id 1 on tokens, 0 on padding."""

    def __init__(self, seq_len):
        self.seq_len = seq_len

    def __call__(self, ex):
        n, out = len(ex["input_ids"]), {}
        for k in ("input_ids", "targets", "loss_mask"):
            out[k] = np.zeros(self.seq_len, np.int32)
            out[k][:n] = ex[k]
        out["positions"] = np.zeros(self.seq_len, np.int32)
        out["positions"][:n] = np.arange(n)
        out["segment_ids"] = (np.arange(self.seq_len) < n).astype(np.int32)
        return out


def _rename_packed(ex):
    # grain's packer emits <feature>_segment_ids / <feature>_positions per feature; all features share them.
    out = {k: np.asarray(ex[k], np.int32) for k in ("input_ids", "targets", "loss_mask")}
    out["positions"] = np.asarray(ex["input_ids_positions"], np.int32)
    out["segment_ids"] = np.asarray(ex["input_ids_segment_ids"], np.int32)
    return out


def _ensure_absl_flags():
    # grain's worker processes read absl flags; outside an absl app (pytest, notebooks) nobody parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _not_none(x):
    return x is not None


def make_dataset(sources: SourceSpec | Sequence[SourceSpec], tokenizer, config: DataConfig):
    """(grain.IterDataset of batches, BadRows). Records are read and validated here, in the main process."""
    specs = [sources] if isinstance(sources, SourceSpec) else list(sources)
    items, bad = [], BadRows()
    for spec in specs:
        kind = "alpaca" if spec.kind == "classification" else spec.kind
        recs, b = load_records(spec, on_bad_rows=config.on_bad_rows)
        items += [(kind, spec.template, r) for r in recs]
        bad.rows += b.rows
    pidx, pcount = config.process_index, config.process_count
    if pidx is None or pcount is None:
        import jax

        pidx, pcount = jax.process_index(), jax.process_count()
    ds = grain.MapDataset.source(items)
    if pcount > 1:
        ds = ds[pidx::pcount]  # each host reads a disjoint shard
    if len(ds) == 0:
        raise ValueError(f"process {pidx} of {pcount} got no records ({len(items)} in all)")
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)  # grain reshuffles each epoch of the repeat below
    ds = ds.repeat(config.num_epochs)
    ds = ds.map(_Tokenize(tokenizer, config.seq_len, config.truncate, config.drop_unsupervised)).filter(_not_none)
    # grain's default read-ahead (16 threads, 500 elements) costs more in bookkeeping than it saves here:
    # tokenization holds the GIL for much of its time. A short read-ahead keeps sentencepiece busy.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=64))
    T = config.seq_len
    if config.packing:
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={"input_ids": T, "targets": T, "loss_mask": T},
            num_packing_bins=config.num_packing_bins or config.batch_size, shuffle_bins=False)
        it = it.map(_rename_packed)
    else:
        it = it.map(_Pad(T))
    it = it.batch(config.batch_size, drop_remainder=True)
    if config.worker_count > 0:
        _ensure_absl_flags()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                         per_worker_buffer_size=max(1, config.prefetch)))
    elif config.prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.prefetch)
    return it, bad


class DataIterator:
    """Iterator over batch dicts with checkpointable state (get_state/set_state, JSON-serialisable)."""

    def __init__(self, dataset, bad_rows: BadRows):
        self.dataset, self.bad_rows = dataset, bad_rows
        self._it = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)

    def close(self):
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def make_pipeline(sources, tokenizer, config: DataConfig) -> DataIterator:
    """The batch iterator; see the module docstring and the batch contract in gemmax/data/__init__.py."""
    return DataIterator(*make_dataset(sources, tokenizer, config))

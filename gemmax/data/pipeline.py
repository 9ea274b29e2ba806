"""grain pipelines: records -> shuffled, sharded, tokenized, packed [batch, seq_len] batches.

    it = make_pipeline(SourceSpec("train.jsonl", kind="alpaca"), tokenizer, DataConfig(seq_len=512, batch_size=8))
    batch = next(it)              # dict of int32 numpy arrays [8, 512]; contract in gemmax/data/__init__.py
    state = it.get_state()        # JSON-serialisable; it.set_state(state) on a fresh pipeline resumes exactly

Order of operations (grain MapDataset -> IterDataset):
  source records -> this process's shard (records[process_index::process_count]) -> drop the examples that
  truncation would drop, reporting them in bad_rows (tokenized once here, only where a drop is possible) ->
  seeded shuffle (a new order each epoch) -> repeat(num_epochs) -> tokenize + shift + truncate (in grain
  worker processes when worker_count > 0) -> first-fit packing (or padding) -> batch -> prefetch.
Each example is shifted on its own (targets = ids[1:]) before packing, so no target crosses an example border.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import grain
import numpy as np

from gemmax.data.formats import example_segments, tokenize_example
from gemmax.data.sources import BadRows, SourceSpec, load_numbered
from gemmax.errors import GemmaxError

__all__ = ["DataConfig", "make_dataset", "make_pipeline", "DataIterator"]


log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """seq_len/batch_size: per-process batch shape [batch_size, seq_len]. truncate: "right" keeps the start of
  a too-long example, "left" keeps its end, "drop" skips it. num_epochs=None repeats forever.
  num_packing_bins: rows the first-fit packer fills at once (default batch_size). worker_count > 0
  tokenizes and packs in that many grain worker processes; prefetch is the buffer of ready batches.
  process_index/process_count default to jax.process_index()/jax.process_count(). on_bad_rows ("skip" or
  "fail") applies to bad rows; examples dropped by truncate="drop" or drop_unsupervised are asked for, so
  they are reported like bad rows (reasons "too long", "no target") but fail only when none is left."""

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
      raise GemmaxError(f"truncate must be 'right', 'left' or 'drop', got {self.truncate!r}")
    if self.seq_len < 2 or self.batch_size < 1:
      raise GemmaxError(
        f"need seq_len >= 2 and batch_size >= 1, got {self.seq_len}, {self.batch_size}"
      )


class _Tokenize:
  """record -> {"input_ids", "targets", "loss_mask"} of length <= seq_len, or None to skip. A class (not a
  closure) so grain can ship it, tokenizer included, to worker processes."""

  def __init__(self, tokenizer, seq_len: int, truncate: str, drop_unsupervised: bool):
    self.tokenizer, self.seq_len, self.truncate, self.drop_unsupervised = (
      tokenizer,
      seq_len,
      truncate,
      drop_unsupervised,
    )

  def __call__(self, item):
    return self.check(item)[0]

  def check(self, item):
    """(example, None), or (None, why it is dropped); the reasons read like BadRows reasons."""
    kind, template, record = item
    ids, mask = tokenize_example(self.tokenizer, record, kind, template)
    ex = {"input_ids": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}
    n, T = len(ex["input_ids"]), self.seq_len
    if n == 0:
      return None, "no tokens: the example tokenizes to nothing"
    if n > T and self.truncate == "drop":
      return None, f"too long: {n} input tokens > seq_len {T} (truncate='drop')"
    if n > T:
      sl = slice(0, T) if self.truncate == "right" else slice(n - T, n)
      ex = {k: v[sl] for k, v in ex.items()}
    if self.drop_unsupervised and not ex["loss_mask"].any():
      return None, f"no target: no response token within seq_len {T} (truncate={self.truncate!r})"
    return ex, None

  def may_drop(self, kind: str) -> bool:
    """False when no example of this kind can be dropped (plain text: every token is a target)."""
    return self.truncate == "drop" or (self.drop_unsupervised and kind != "text")

  def drop_reason(self, item) -> str | None:
    """check(item)[1], cheaper: an example that fits seq_len and ends in a target eos (Alpaca, text) is
    kept, and its length needs only a plain encode (same ids as the offsets path, about 4x faster)."""
    kind, template, record = item
    segments, add_bos, add_eos = example_segments(record, kind, template, self.tokenizer)
    if add_eos:
      n = len(self.tokenizer.encode("".join(piece for piece, _ in segments))) + add_bos
      if n <= self.seq_len:  # n = input length: ids[:-1] of bos + text + eos
        return None
    return self.check(item)[1]


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


class _PadBatch:
  """A finite pipeline's last, partial batch: filled up with empty rows (loss_mask 0, segment id 0)
  so every batch has the same shape (one compiled step, divisible over a mesh) and no example is lost."""

  def __init__(self, batch_size):
    self.batch_size = batch_size

  def __call__(self, batch):
    short = self.batch_size - len(batch["input_ids"])
    if short <= 0:
      return batch
    return {k: np.pad(v, [(0, short)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


def _rename_packed(ex):
  # grain's packer emits <feature>_segment_ids / <feature>_positions per feature; all features share them.
  out = {k: np.asarray(ex[k], np.int32) for k in ("input_ids", "targets", "loss_mask")}
  out["positions"] = np.asarray(ex["input_ids_positions"], np.int32)
  out["segment_ids"] = np.asarray(ex["input_ids_segment_ids"], np.int32)
  return out


def ensure_absl_flags():
  # grain's worker processes read absl flags; outside an absl app (pytest, notebooks) nobody parsed them.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _not_none(x):
  return x is not None


def _screen(items, origins, tokenize: _Tokenize, bad: BadRows):
  """Drops (and reports with row numbers) the examples that truncation would drop, before any shuffling,
  so every epoch sees the same examples and an all-dropped source fails here instead of spinning forever
  in the pipeline's filter. Tokenizes in this process, only for kinds where a drop is possible."""
  if not any(tokenize.may_drop(item[0]) for item in items):
    return items
  kept, dropped = [], BadRows()
  for item, (path, n) in zip(items, origins):
    if tokenize.may_drop(item[0]):
      why = tokenize.drop_reason(item)
      if why:
        dropped.rows.append((path, n, why))
        continue
    kept.append(item)
  if dropped.count:
    log.warning("dropped %s", dropped.summary())
    bad.rows += dropped.rows
  return kept


def make_dataset(sources: SourceSpec | Sequence[SourceSpec], tokenizer, config: DataConfig):
  """(grain.IterDataset of batches, BadRows). Records are read and validated here, in the main process."""
  specs = [sources] if isinstance(sources, SourceSpec) else list(sources)
  items, origins, bad = [], [], BadRows()
  for spec in specs:
    kind = "alpaca" if spec.kind == "classification" else spec.kind
    if kind == "alpaca" and spec.template not in (None, "alpaca"):
      shown = spec.template if len(spec.template) < 40 else "a jinja template"
      log.info("%s: Alpaca rows become one-turn chats in chat template %s", spec.path, shown)
    rows, b = load_numbered(spec, on_bad_rows=config.on_bad_rows, tokenizer=tokenizer)
    items += [(kind, spec.template, rec) for _, _, rec in rows]
    origins += [(path, n) for path, n, _ in rows]
    bad.rows += b.rows
  pidx, pcount = config.process_index, config.process_count
  if pidx is None or pcount is None:
    import jax

    pidx, pcount = jax.process_index(), jax.process_count()
  total = len(items)
  if pcount > 1:
    items, origins = items[pidx::pcount], origins[pidx::pcount]  # each host reads a disjoint shard
  if not items:
    raise GemmaxError(f"process {pidx} of {pcount} got no records ({total} in all)")
  tokenize = _Tokenize(tokenizer, config.seq_len, config.truncate, config.drop_unsupervised)
  n_bad = bad.count
  items = _screen(items, origins, tokenize, bad)
  if not items:
    where = ", ".join(str(s.path) for s in specs) + (
      f" (process {pidx} of {pcount})" if pcount > 1 else ""
    )
    raise GemmaxError(
      f"every example of {where} was dropped by truncation: "
      f"{BadRows(bad.rows[n_bad:]).summary(limit=3)}; raise seq_len or change truncate"
    )
  ds = grain.MapDataset.source(items)
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)  # grain reshuffles each epoch of the repeat below
  ds = ds.repeat(config.num_epochs)
  # After _screen the filter drops nothing; it stays as a guard should tokenization ever differ in a worker.
  ds = ds.map(tokenize).filter(_not_none)
  # grain's default read-ahead (16 threads, 500 elements) costs more in bookkeeping than it saves here:
  # tokenization holds the GIL for much of its time. A short read-ahead keeps sentencepiece busy.
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=64)
  )
  T = config.seq_len
  if config.packing:
    it = grain.experimental.FirstFitPackIterDataset(
      it,
      length_struct={"input_ids": T, "targets": T, "loss_mask": T},
      num_packing_bins=config.num_packing_bins or config.batch_size,
      shuffle_bins=False,
    )
    it = it.map(_rename_packed)
  else:
    it = it.map(_Pad(T))
  if config.num_epochs is None:
    it = it.batch(config.batch_size, drop_remainder=True)
  else:  # a finite pass (evaluation): keep the remainder, padded to a full batch
    it = it.batch(config.batch_size, drop_remainder=False).map(_PadBatch(config.batch_size))
  return prefetched(it, config), bad


def prefetched(it, config):
  """`it` read ahead: by `config.worker_count` processes, else a thread (`config.prefetch`)."""
  if config.worker_count > 0:
    ensure_absl_flags()
    return it.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=max(1, config.prefetch)
      )
    )
  if config.prefetch > 0:
    return grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.prefetch)
  return it


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


def make_eval_pipeline(sources, tokenizer, config: DataConfig) -> Callable[[], DataIterator]:
  """A factory of fresh passes over held-out data (config.num_epochs=1, no shuffle) for
  `Trainer(eval_data=...)`. The records are read, validated and screened here, once: a bad
  validation file fails before training starts, and each evaluation re-iterates the same dataset."""
  if config.num_epochs != 1 or config.shuffle:
    raise GemmaxError(
      f"make_eval_pipeline needs num_epochs=1 and shuffle=False, got "
      f"num_epochs={config.num_epochs}, shuffle={config.shuffle}"
    )
  dataset, bad = make_dataset(sources, tokenizer, config)
  return lambda: DataIterator(dataset, bad)

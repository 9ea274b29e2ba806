"""grain pipeline over a top-k store: records -> shuffled, sharded, packed [batch, seq_len] batches.

    it = store_pipeline(TopKStore("runs/x/store"), DataConfig(seq_len=256, batch_size=8))
    batch = next(it)   # gemmax.data's batch contract + topk_ids [B, T, k] int32,
                       # topk_probs [B, T, k] float16, topk_tail [B, T] float16

Same order of operations as gemmax.data.make_dataset (shard by process -> seeded shuffle ->
repeat -> decode + truncate -> first-fit packing or padding -> batch -> prefetch), and the same
resumable iterator (get_state / set_state).
"""

from __future__ import annotations

import grain
import numpy as np

from gemmax.data.pipeline import DataConfig, DataIterator, prefetched
from gemmax.data.sources import BadRows
from gemmax.distill.store import TopKStore, decode_record
from gemmax.errors import GemmaxError

FEATURES = ("input_ids", "targets", "loss_mask", "topk_ids", "topk_probs", "topk_tail")


class _Decode:
  """bytes -> example dict cut to seq_len positions (right truncation); a class so grain can
  ship it to worker processes."""

  def __init__(self, k: int, seq_len: int):
    self.k, self.seq_len = k, seq_len

  def __call__(self, data: bytes) -> dict:
    ex = decode_record(data, self.k)
    return {name: ex[name][: self.seq_len] for name in FEATURES}


class _Pad:
  """One example per row: zero-pad every feature to seq_len; segment id 1 on tokens."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def __call__(self, ex: dict) -> dict:
    n = len(ex["input_ids"])
    out = {}
    for name in FEATURES:
      out[name] = np.zeros((self.seq_len,) + ex[name].shape[1:], ex[name].dtype)
      out[name][:n] = ex[name]
    out["positions"] = np.zeros(self.seq_len, np.int32)
    out["positions"][:n] = np.arange(n)
    out["segment_ids"] = (np.arange(self.seq_len) < n).astype(np.int32)
    return out


def _rename_packed(ex: dict) -> dict:
  # grain's packer adds <feature>_segment_ids / _positions per feature; all features share them
  out = {name: ex[name] for name in FEATURES}
  out["positions"] = np.asarray(ex["input_ids_positions"], np.int32)
  out["segment_ids"] = np.asarray(ex["input_ids_segment_ids"], np.int32)
  return out


def store_pipeline(store: TopKStore, config: DataConfig) -> DataIterator:
  """Batches of stored examples with their teacher top-k; see the module docstring."""
  pidx, pcount = config.process_index, config.process_count
  if pidx is None or pcount is None:
    import jax

    pidx, pcount = jax.process_index(), jax.process_count()
  ds = grain.MapDataset.source(store.source())
  if pcount > 1:
    ds = ds[pidx::pcount]
  if len(ds) == 0:
    raise GemmaxError(f"process {pidx} of {pcount} got no records from {store.directory}")
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs).map(_Decode(store.k, config.seq_len))
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=64)
  )
  if config.packing:
    t = config.seq_len
    it = grain.experimental.FirstFitPackIterDataset(
      it,
      length_struct={name: t for name in FEATURES},
      num_packing_bins=config.num_packing_bins or config.batch_size,
      shuffle_bins=False,
    )
    it = it.map(_rename_packed)
  else:
    it = it.map(_Pad(config.seq_len))
  it = it.batch(config.batch_size, drop_remainder=True)
  return DataIterator(prefetched(it, config), BadRows())

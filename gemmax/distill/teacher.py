"""The offline teacher stage: run a teacher over a dataset and write its top-k into a store.

    manifest = write_teacher_store(teacher, tokenizer, SourceSpec("train.jsonl", kind="text"),
                                   "runs/x/store", k=32, seq_len=256, num_shards=4)

Examples are tokenized as gemmax.data does (shifted within each example, cut to seq_len),
split into `num_shards` contiguous shards, packed next-fit into rows of seq_len (segment ids keep
examples apart) and run `batch_size` rows at a time. Per token the teacher's logits are turned
into k ids (the top k, or k ids sampled without replacement by Gumbel top-k), their
probabilities and the tail mass, chunked over tokens so [B, T, V] logits never exist at once.

Resumable: a shard is written to a temp file and renamed, then its .json sidecar is written; a
rerun with the same settings skips finished shards (a different setting fails, naming it).
Gumbel keys derive from (seed, shard, batch), so a resumed store is bit-identical. Shard s is
written by process s % process_count; process 0 completes the manifest once all shards exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.distill import store as st
from gemmax.distill.losses import _NEG, _not_in
from gemmax.models.head import DEFAULT_LOGIT_BUDGET, chunk_tokens_for, scan_logits


def select_topk(logits, k: int, *, temperature: float = 1.0, rng=None):
  """logits [..., V] -> (ids [..., k] int32, probs [..., k] f32, tail [...] f32) at temperature.

  rng None: the k most likely ids (descending). With a key: k ids sampled without replacement
  from softmax(logits / temperature) (Gumbel top-k), in sampling order.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  score = logp if rng is None else logp + jax.random.gumbel(rng, logp.shape, jnp.float32)
  _, ids = jax.lax.top_k(score, k)
  probs = jnp.exp(jnp.take_along_axis(logp, ids, axis=-1))
  # the tail as a masked logsumexp, not 1 - sum(probs): exact when it is tiny
  tail = jnp.exp(jax.nn.logsumexp(jnp.where(_not_in(ids, logp.shape[-1]), logp, _NEG), axis=-1))
  return ids.astype(jnp.int32), probs, tail


@functools.lru_cache(maxsize=8)  # one compilation per teacher structure and setting
def _make_runner(graphdef, k, temperature, gumbel, chunk):
  """jitted (state, ids, positions, segments, rng) -> ids [B,T,k], probs f16, tail f16 [B,T]."""

  @jax.jit
  def run(state, input_ids, positions, segment_ids, rng):
    model = nnx.merge(graphdef, state)
    h = model.hidden_states(input_ids, positions=positions, segment_ids=segment_ids)
    b, t, d = h.shape
    head = model.output_head()
    head = head._replace(weight=head.weight.astype(h.dtype))
    c = chunk or chunk_tokens_for(head.vocab_size, b * t, DEFAULT_LOGIT_BUDGET // 2)

    def body(_, logits, x):
      key = jax.random.fold_in(rng, x["rows"][0] // c) if gumbel else None  # the chunk's index
      ids, p, tail = select_topk(logits, k, temperature=temperature, rng=key)
      return None, (ids, p.astype(jnp.float16), tail.astype(jnp.float16))

    _, out = scan_logits(body, None, h.reshape(b * t, d), head, chunk=c)
    return tuple(x.reshape(b, t, *x.shape[1:]) for x in out)

  return run


def _examples(items, tokenizer, seq_len):
  """(kind, template, record) items -> list of (tokens [n + 1], loss_mask [n]); right-truncated,
  examples with no scored token dropped (as gemmax.data does)."""
  from gemmax.data import tokenize_example

  out = []
  for kind, template, record in items:
    ids, mask = tokenize_example(tokenizer, record, kind, template)
    ids, mask = (
      np.asarray(ids, np.int32)[: seq_len + 1],
      np.asarray(mask, np.int32)[1 : seq_len + 1],
    )
    if len(mask) and mask.any():
      out.append((ids, mask))
  return out


def _rows(examples, seq_len):
  """Next-fit packing: lists of example indices whose lengths sum to <= seq_len."""
  rows, cur, used = [], [], 0
  for i, (_, mask) in enumerate(examples):
    if cur and used + len(mask) > seq_len:
      rows.append(cur)
      cur, used = [], 0
    cur.append(i)
    used += len(mask)
  return rows + ([cur] if cur else [])


def _batch(examples, rows, batch_size, seq_len):
  shape = (batch_size, seq_len)
  ids, pos, seg = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  where = []  # (example index, row, start)
  for r, row in enumerate(rows):
    start = 0
    for s, i in enumerate(row):
      toks, mask = examples[i]
      n = len(mask)
      ids[r, start : start + n], pos[r, start : start + n] = toks[:-1], np.arange(n)
      seg[r, start : start + n] = s + 1
      where.append((i, r, start))
      start += n
  return ids, pos, seg, where


def params_fingerprint(model) -> str:
  """sha256 of a model's config and parameter values (for teachers not loaded from a dir)."""
  h = hashlib.sha256(repr(model.config).encode())
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    h.update(np.asarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()


def _load_items(sources, on_bad_rows):
  from gemmax.data import SourceSpec, load_records

  specs = [sources] if isinstance(sources, SourceSpec) else list(sources)
  items = []
  for spec in specs:
    kind = "alpaca" if spec.kind == "classification" else spec.kind
    records, _ = load_records(spec, on_bad_rows=on_bad_rows)
    items += [(kind, spec.template, r) for r in records]
  return specs, items


def write_teacher_store(
  teacher,
  tokenizer,
  sources,
  directory: str,
  *,
  k: int,
  temperature: float = 1.0,
  sampling: str = "topk",
  seed: int = 0,
  seq_len: int = 512,
  batch_size: int = 8,
  num_shards: int = 1,
  teacher_id: str | None = None,
  teacher_path: str = "",
  mesh=None,
  progress: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
  on_bad_rows: str = "skip",
  chunk: int | None = None,
) -> dict:
  """Writes (or finishes) the store in `directory`; returns its manifest (see module docstring).

  sources: gemmax.data.SourceSpec(s); teacher_id: a stable id of the teacher (default: a hash of
  its parameters; the CLI passes distill.model_fingerprint of its checkpoint directory); mesh: run
  the (already sharded) teacher under jax.set_mesh(mesh).
  """
  from gemmax.data import check_vocab

  cfg = teacher.config
  check_vocab(tokenizer, cfg.vocab_size)
  if k > cfg.vocab_size:
    raise st.StoreError(f"k = {k} exceeds the teacher's vocabulary ({cfg.vocab_size})")
  specs, items = _load_items(sources, on_bad_rows)
  spec = st.StoreSpec(
    teacher=teacher_id or params_fingerprint(teacher),
    tokenizer=tokenizer.fingerprint,
    dataset=st.dataset_fingerprint(specs),
    k=k,
    temperature=float(temperature),
    sampling=sampling,
    seed=seed,
    seq_len=seq_len,
    num_shards=num_shards,
  ).validate()
  pidx = jax.process_index() if process_index is None else process_index
  pcount = jax.process_count() if process_count is None else process_count
  os.makedirs(directory, exist_ok=True)
  manifest = st.read_manifest(directory)
  if manifest is not None:
    diff = st.mismatches(manifest["spec"], dataclasses.asdict(spec), list(manifest["spec"]))
    if diff:
      raise st.StoreError(
        f"{directory} holds a store written with other settings ("
        f"{'; '.join(diff)}); use another directory or delete this one"
      )
    if manifest.get("complete"):
      return manifest
  else:
    manifest = {
      "format": st.FORMAT,
      "complete": False,
      "spec": dataclasses.asdict(spec),
      "teacher": {
        "path": teacher_path,
        "vocab_size": cfg.vocab_size,
        "family": cfg.family,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
      },
      "tokenizer": {"path": tokenizer.path, "vocab_size": tokenizer.vocab_size},
      "dataset": {
        "sources": [dict(path=str(s.path), kind=s.kind, template=s.template) for s in specs],
        "records": len(items),
      },
      "record": {"ids": "int32", "probs": "float16", "tail": "float16"},
    }
    if pidx == 0:
      st.write_json(os.path.join(directory, st.MANIFEST), manifest)
  bounds = np.linspace(0, len(items), num_shards + 1).astype(int)
  todo = [
    s for s in range(num_shards) if s % pcount == pidx and not _shard_done(directory, s, num_shards)
  ]
  if todo:
    teacher.eval()
    graphdef, state = nnx.split(teacher)
    run = _make_runner(graphdef, k, float(temperature), sampling == "gumbel", chunk)
    bar = None
    if progress:
      from tqdm.auto import tqdm

      bar = tqdm(
        total=int(sum(bounds[s + 1] - bounds[s] for s in todo)),
        desc="teacher",
        unit="ex",
        dynamic_ncols=True,
      )
    for s in todo:
      _write_shard(
        directory,
        s,
        num_shards,
        items[bounds[s] : bounds[s + 1]],
        tokenizer,
        spec,
        run,
        state,
        batch_size,
        mesh,
        bar,
      )
    if bar is not None:
      bar.close()
  if pidx == 0 and all(_shard_done(directory, s, num_shards) for s in range(num_shards)):
    manifest = _complete(directory, manifest, num_shards)
  return manifest


def _sidecar(directory, s, n):
  return os.path.join(directory, st.shard_name(s, n).replace(".array_record", ".json"))


def _shard_done(directory, s, n) -> bool:
  side, path = _sidecar(directory, s, n), os.path.join(directory, st.shard_name(s, n))
  if not (os.path.isfile(side) and os.path.isfile(path)):
    return False
  with open(side, encoding="utf-8") as f:
    return json.load(f).get("bytes") == os.path.getsize(path)


def _write_shard(directory, s, n, items, tokenizer, spec, run, state, batch_size, mesh, bar):
  from array_record.python.array_record_module import ArrayRecordWriter

  examples = _examples(items, tokenizer, spec.seq_len)
  rows = _rows(examples, spec.seq_len)
  path = os.path.join(directory, st.shard_name(s, n))
  tmp = path + ".tmp"
  writer = ArrayRecordWriter(tmp, st.RECORD_OPTIONS)
  key = jax.random.fold_in(jax.random.key(spec.seed), s)
  tokens = scored = record_bytes = 0
  t0 = time.perf_counter()
  ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  for b in range(0, len(rows), batch_size):
    ids, pos, seg, where = _batch(examples, rows[b : b + batch_size], batch_size, spec.seq_len)
    with ctx:
      out = run(state, ids, pos, seg, jax.random.fold_in(key, b))
    top_ids, probs, tail = (np.asarray(x) for x in jax.device_get(out))
    for i, r, start in where:  # rows keep example order, so records do too
      toks, mask = examples[i]
      sl = slice(start, start + len(mask))
      record = st.encode_record(toks, mask, top_ids[r, sl], probs[r, sl], tail[r, sl])
      writer.write(record)
      record_bytes += len(record)
      tokens += len(mask)
      scored += int(mask.sum())
    if bar is not None:
      bar.update(len(where))
      bar.set_postfix(shard=f"{s + 1}/{n}", tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}")
  writer.close()
  if bar is not None:  # examples dropped (nothing scored) count as done too
    bar.update(len(items) - len(examples))
  os.replace(tmp, path)
  st.write_json(
    _sidecar(directory, s, n),
    {
      "shard": st.shard_name(s, n),
      "examples": len(examples),
      "tokens": tokens,
      "scored_tokens": scored,
      "record_bytes": record_bytes,
      "bytes": os.path.getsize(path),
      "sha256": st.shard_sha256(path),
    },
  )


def _complete(directory, manifest, n) -> dict:
  stats = {"examples": 0, "tokens": 0, "scored_tokens": 0, "record_bytes": 0, "bytes": 0}
  for s in range(n):
    with open(_sidecar(directory, s, n), encoding="utf-8") as f:
      side = json.load(f)
    for key in stats:
      stats[key] += side[key]
  if not stats["examples"]:
    raise st.StoreError(
      f"{directory}: no example has a scored token within seq_len; nothing "
      f"to distil (raise data.seq_len?)"
    )
  # bytes: the shard files (zstd-compressed records + ~128 KiB of container per file);
  # record_bytes: the records before compression (the format's 6k + 8 bound)
  stats["bytes_per_token"] = stats["bytes"] / max(stats["tokens"], 1)
  stats["record_bytes_per_token"] = stats["record_bytes"] / max(stats["tokens"], 1)
  stats["bytes_per_scored_token"] = stats["bytes"] / max(stats["scored_tokens"], 1)
  manifest = dict(
    manifest, complete=True, stats=stats, shards=[st.shard_name(s, n) for s in range(n)]
  )
  st.write_json(os.path.join(directory, st.MANIFEST), manifest)
  return manifest

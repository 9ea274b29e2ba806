"""`Sampler(model, tokenizer).generate(...)`: batched prompts, KV cache, greedy or sampled."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.errors import GemmaxError
from gemmax.models.kv_cache import clear_cache, init_cache
from gemmax.sampling.layout import to_out_in, use_out_in
from gemmax.sampling.loop import decode_step, generate_loop, prefill_step

_BUCKET = 16  # prompt lengths are padded up to a multiple of this to reuse compilations


@dataclasses.dataclass
class SampleResult:
  """One entry per prompt. `tokens` are the generated ids (a terminating stop id included);
  `text` is their decoding without the stop id and cut before a stop string; `logprobs` f32
  aligned with `tokens`; `finish` is "stop" | "length" | "cache_full"."""

  tokens: list
  text: list
  logprobs: list
  finish: list
  prompt_tokens: list
  cache_full: bool = False


class Sampler:
  """Generates from a gemmax Transformer (any adapters/quantization inside it are used as is).

  max_len: KV cache length (prompt + generation); None sizes it to each call's needs.
  out_in_kernels: decode with plain Linear kernels transposed to [out, in] (gemmax.sampling.layout:
    a copy of those weights, made on the first call and kept while the model's arrays are the same
    objects; any change to the model replaces them and is noticed). None: on CPU for batches > 1
    (~1.7x faster decoding) and for bf16/f16 compute at any batch (gemmax.ops.matmul).
  The cache of the last call is kept and emptied in place for the next call of the same batch size
  and cache length (fresh memory for a large cache costs more than a short generation).
  """

  def __init__(
    self,
    model,
    tokenizer=None,
    max_len: Optional[int] = None,
    cache_dtype=None,
    out_in_kernels: Optional[bool] = None,
  ):
    context = model.config.max_position_embeddings
    if max_len is not None and not 2 <= max_len <= context:
      raise GemmaxError(
        f"Sampler: max_len {max_len} must be in [2, the model's max_position_embeddings {context}]"
      )
    self.model, self.tokenizer, self.max_len = model, tokenizer, max_len
    self.cache_dtype, self.out_in_kernels = cache_dtype, out_in_kernels
    self._out_in = None  # (the model's state leaves, the decode copy's (graphdef, state))
    self._spare = None  # the last call's KV cache, recycled by _empty_cache

  # --- prompts ---------------------------------------------------------------------------------
  def encode(self, prompt) -> list[int]:
    if isinstance(prompt, str):
      if self.tokenizer is None:
        raise GemmaxError("Sampler: a text prompt needs a tokenizer (pass token ids otherwise)")
      # BOS where the checkpoint's tokenizer adds one (Gemma, Llama) and not where it does not
      # (SmolLM2's `<|im_start|>` is its BOS): as transformers tokenizes a prompt.
      return list(
        self.tokenizer.encode(prompt, add_bos=getattr(self.tokenizer, "add_bos_token", True))
      )
    ids = [int(t) for t in prompt]
    if not ids:
      raise GemmaxError("Sampler: empty prompt")
    return ids

  def _batch(self, prompts):
    single = isinstance(prompts, str) or (
      len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))
    )
    ids = [self.encode(p) for p in ([prompts] if single else prompts)]
    if not ids:
      raise GemmaxError("Sampler: no prompts given")
    return ids

  def _stops(self, stop):
    ids, strings = set(), []
    eos = [getattr(self.tokenizer, "eos_id", None), self.model.config.eos_token_id]
    for e in eos:
      ids.update(e if isinstance(e, (tuple, list)) else [] if e is None or e < 0 else [e])
    for s in [stop] if isinstance(stop, (str, int)) else stop or []:
      if isinstance(s, str):
        strings.append(s)
      else:
        ids.add(int(s))
    return sorted(int(i) for i in ids), strings

  def _pad_id(self):
    pad = getattr(self.tokenizer, "pad_id", None)
    if pad is None or pad < 0:
      pad = self.model.config.pad_token_id
    return 0 if pad is None or pad < 0 else int(pad)

  # --- generation ------------------------------------------------------------------------------
  def generate(
    self,
    prompts,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k=None,
    top_p=None,
    stop=None,
    seed: int = 0,
    stream: Optional[Callable[[list, list], None]] = None,
  ) -> SampleResult:
    """prompts: a string, a list of token ids, or a list of either.

    stop: stop strings and/or token ids (the tokenizer's and config's EOS always stop).
    stream: called after every step with (new token id per row or None, new text per row).
    """
    if max_new_tokens < 1:
      raise GemmaxError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    t = 0.0 if temperature is None else float(temperature)
    if not (math.isfinite(t) and t >= 0):
      raise GemmaxError(f"generate: temperature must be a finite number >= 0, got {temperature}")
    if top_p is not None and not 0 < float(top_p) <= 1:  # (NaN fails both comparisons)
      raise GemmaxError(f"generate: top_p must be in (0, 1], got {top_p}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
      raise GemmaxError(f"generate: top_k must be an integer >= 1 or None, got {top_k}")
    ids = self._batch(prompts)
    stop_ids, stop_strings = self._stops(stop)
    b, longest = len(ids), max(len(p) for p in ids)
    max_len = self.max_len or longest + max_new_tokens
    if longest >= max_len:
      raise GemmaxError(
        f"generate: prompt of {longest} tokens does not fit the cache "
        f"(max_len={max_len}); raise Sampler(max_len=...)"
      )
    p = -(-longest // _BUCKET) * _BUCKET
    if self.max_len is None:
      max_len = p + max_new_tokens
    elif p >= max_len:
      p = longest
    steps = min(max_new_tokens, max_len - p + 1)  # the last token needs no cache slot
    cache_full = steps < max_new_tokens
    if cache_full:
      warnings.warn(
        f"generate: cache length {max_len} allows only {steps} of "
        f"{max_new_tokens} new tokens after a {p}-token prompt"
      )
    pad = self._pad_id()
    tokens = np.full((b, p), pad, np.int32)
    segments = np.zeros((b, p), np.int32)
    positions = np.zeros((b, p), np.int32)
    for r, row in enumerate(ids):  # left padding: every row ends at column p - 1
      n = len(row)
      tokens[r, p - n :] = row
      segments[r, p - n :] = 1
      positions[r, p - n :] = np.arange(n)
    out_in = use_out_in(b, self.out_in_kernels, self.model.config.dtype)
    graphdef, state = self._state(out_in)
    cache = self._empty_cache(b, max_len)
    greedy = temperature is None or float(temperature) == 0.0
    kw = dict(  # the jitted functions' static arguments
      graphdef=graphdef,
      greedy=greedy,
      top_k=None if top_k is None else min(int(top_k), self.model.config.vocab_size),
      use_top_p=top_p is not None,
    )
    knobs = (jnp.float32(temperature or 0.0), jnp.float32(1.0 if top_p is None else top_p))
    run = (state, tokens, positions, segments, cache, jax.random.key(seed), *knobs)
    if stream is None and not stop_strings:
      stops = jnp.asarray(stop_ids or [-1], jnp.int32)
      out, lps, _, self._spare = generate_loop(*run, stops, pad, num_steps=steps, **kw)
      out, lps = np.asarray(out), np.asarray(lps)
      gen = [list(map(int, out[r])) for r in range(b)]
      lp = [lps[r] for r in range(b)]
    else:
      gen, lp, self._spare = self._stream_loop(run, kw, steps, stop_ids, stop_strings, stream)
    return self._finish(ids, gen, lp, stop_ids, stop_strings, steps, max_new_tokens, cache_full)

  def _state(self, out_in: bool):
    """(graphdef, state) for the jitted functions; with `out_in`, the decode copy is reused
    across calls while every array of the model is the one it was made from (a transpose of a
    large model per call would cost more than a short generation)."""
    graphdef, state = nnx.split(self.model)
    if not out_in:
      return graphdef, state
    leaves = jax.tree.leaves(state)
    if (
      self._out_in is not None
      and len(self._out_in[0]) == len(leaves)
      and all(a is b for a, b in zip(self._out_in[0], leaves))
    ):
      return self._out_in[1]
    self._out_in = None  # free the old copy before making the new one
    self._out_in = (leaves, to_out_in(self.model))
    return self._out_in[1]

  def _empty_cache(self, batch: int, max_len: int):
    spare, self._spare = self._spare, None  # a donated cache must never be used twice
    dtype = jnp.dtype(self.cache_dtype or self.model.config.dtype)
    if (
      spare is not None
      and spare.max_len == max_len
      and spare.layers[0].k.shape[0] == batch
      and spare.layers[0].k.dtype == dtype
    ):
      return clear_cache(spare)
    del spare  # free it before allocating the new one
    return init_cache(self.model.config, batch, max_len, dtype)

  def _stream_loop(self, run, kw, steps, stop_ids, stop_strings, stream):
    """Prefill and decode one step per jitted call, streaming each step's tokens and text."""
    state, tokens, positions, segments, cache, rng, *knobs = run
    b = tokens.shape[0]
    gen, lp = [[] for _ in range(b)], [[] for _ in range(b)]
    done = [False] * b
    shown = [""] * b
    pos = positions[:, -1] + 1
    rng, sub = jax.random.split(rng)
    tok, lps, cache = prefill_step(state, tokens, positions, segments, cache, sub, *knobs, **kw)
    for i in range(steps):
      if i:
        rng, sub = jax.random.split(rng)
        tok, lps, cache = decode_step(
          state, tok, jnp.asarray(pos + i - 1), cache, sub, *knobs, **kw
        )
      t_np, lp_np = np.asarray(tok), np.asarray(lps)
      new_ids, new_text = [], []
      for r in range(b):
        if done[r]:
          new_ids.append(None), new_text.append("")
          continue
        gen[r].append(int(t_np[r]))
        lp[r].append(float(lp_np[r]))
        text = self._text(gen[r], stop_ids, stop_strings)
        done[r] = gen[r][-1] in stop_ids or (text is not None and self._cut(text, stop_strings)[1])
        new_ids.append(gen[r][-1])
        new_text.append(text[len(shown[r]) :] if text is not None else "")
        shown[r] = text or ""
      if stream is not None:
        stream(new_ids, new_text)
      if all(done):
        break
    return gen, [np.asarray(x, np.float32) for x in lp], cache

  def _text(self, toks, stop_ids, stop_strings):
    if self.tokenizer is None:
      return None
    body = toks[:-1] if toks and toks[-1] in stop_ids else toks
    return self._cut(self.tokenizer.decode(body), stop_strings)[0]

  @staticmethod
  def _cut(text, stop_strings):
    hits = [text.find(s) for s in stop_strings if s in text]
    return (text[: min(hits)], True) if hits else (text, False)

  def _finish(self, ids, gen, lp, stop_ids, stop_strings, steps, max_new, cache_full):
    toks, texts, lps, finish = [], [], [], []
    for row, lrow in zip(gen, lp):
      end = next((j + 1 for j, t in enumerate(row) if t in stop_ids), None)
      row = row[:end] if end else row
      text = self._text(row, stop_ids, stop_strings)
      hit_string = (
        text is not None
        and self.tokenizer is not None
        and any(s in self.tokenizer.decode(row) for s in stop_strings)
      )
      toks.append(row)
      lps.append(np.asarray(lrow[: len(row)], np.float32))
      texts.append(text)
      reason = "stop" if end or hit_string else ("cache_full" if cache_full else "length")
      finish.append(reason)
    return SampleResult(
      tokens=toks, text=texts, logprobs=lps, finish=finish, prompt_tokens=ids, cache_full=cache_full
    )

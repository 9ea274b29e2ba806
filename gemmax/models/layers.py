"""Building blocks: Linear, Embed, RMSNorm (both families' variants) and the gated MLP."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.ops.common import is_low_precision
from gemmax.ops.few_rows import FEW_ROWS, few_rows_product  # noqa: F401 (FEW_ROWS re-exported)

_init = nnx.initializers.normal(stddev=0.02)


def _contract(x, w, x_dim: int, w_dim: int) -> jax.Array:
  """2-D product contracting x's dim `x_dim` with w's dim `w_dim`, float32 accumulation."""
  return jax.lax.dot_general(
    x, w, (((x_dim,), (w_dim,)), ((), ())), preferred_element_type=jnp.float32
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_f32_acc(x: jax.Array, w: jax.Array, w_t: bool, out_dtype) -> jax.Array:
  """x [n, k] @ (w [k, m], or w [m, k] transposed when w_t) for bf16/f16 operands, accumulated
  in float32 and cast to `out_dtype`.

  Why: XLA:CPU runs a dot whose result is bf16 by upcasting both operands to float32 (~170
  GFLOP/s here), but a bf16 x bf16 -> f32 dot natively (AMX / AVX512-BF16: 600-900 GFLOP/s);
  both round the same float32 sums. The fast kernels also need the transposes expressed as
  contracting dims: `jnp.dot(a, b.T)` compiles to the slow path, the same product as a
  dot_general contracting dim 1 with dim 1 does not. Autodiff would give f32 x bf16 gradient
  products (upcast again), hence the custom VJP, which keeps both gradient dots in this form.
  """
  return _contract(x, w, 1, 1 if w_t else 0).astype(out_dtype)


def _dot_f32_acc_fwd(x, w, w_t, out_dtype):
  return _dot_f32_acc(x, w, w_t, out_dtype), (x, w)


def contract_tokens(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^T @ b for a [n, p], b [n, q] -> [p, q] float32: a weight gradient, contracting tokens.

  Why the split: XLA:CPU takes a 2-D product contracting the leading axis of both operands
  (and any product whose operand is an explicit transpose) as unsupported by its matmul
  library and, for bf16, upcasts both operands to float32. Written with the token axis split
  in two, the dot is canonicalised by XLA itself (a transposing copy of `a`, so keep `a` the
  smaller operand) and runs as a bf16 x bf16 -> f32 library dot: 3-6x faster for bf16 here.
  float32 operands (and odd n) keep the 2-D form, which is as fast for them.
  """
  n = a.shape[0]
  if is_low_precision(a, b) and n % 2 == 0 and n > 2:
    a, b = a.reshape(2, n // 2, a.shape[1]), b.reshape(2, n // 2, b.shape[1])
    return jax.lax.dot_general(
      a, b, (((0, 1), (0, 1)), ((), ())), preferred_element_type=jnp.float32
    )
  return _contract(a, b, 0, 0)


def _dot_f32_acc_bwd(w_t, out_dtype, res, g):
  x, w = res
  g = g.astype(x.dtype)  # the gradient enters the products in the operands' precision
  dx = _contract(g, w, 1, 0 if w_t else 1)
  dw = contract_tokens(g, x) if w_t else contract_tokens(x, g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dot_f32_acc.defvjp(_dot_f32_acc_fwd, _dot_f32_acc_bwd)


def dot2d(
  x: jax.Array, w: jax.Array, *, w_t: bool = False, preferred_element_type=None
) -> jax.Array:
  """x [n, k] @ w [k, m] (or @ w.T for w [m, k] when `w_t`); bf16/f16 operands accumulate in
  float32 through `_dot_f32_acc`, float32 ones take XLA's dot as is."""
  if is_low_precision(x, w):
    return _dot_f32_acc(x, w, w_t, jnp.dtype(preferred_element_type or x.dtype))
  return jnp.dot(x, w.T if w_t else w, preferred_element_type=preferred_element_type)


def matmul(x: jax.Array, w: jax.Array, preferred_element_type=None) -> jax.Array:
  """x [..., in] @ w [in, out] -> [..., out], computed as one 2-D [tokens, in] matmul.

  Why flatten: the weight gradient x^T @ dy of a [B, T, in] input contracts two dims, and
  XLA:CPU canonicalises that dot by transposing the [B, T, out] cotangent into a fresh buffer
  (a strided copy that cost more than the matmuls in a LoRA step). With 2-D operands the
  contraction is a single leading dim, which the matmul library takes as is.
  """
  lead = x.shape[:-1]
  y = dot2d(x.reshape(-1, x.shape[-1]), w, preferred_element_type=preferred_element_type)
  return y.reshape(*lead, w.shape[-1])


def matmul_t(x: jax.Array, wt: jax.Array, preferred_element_type=None) -> jax.Array:
  """x [..., in] @ wt[out, in]^T -> [..., out].

  Why: decoding multiplies a few rows by every weight. On XLA:CPU a [8, in] x [in, out] product
  re-packs the whole weight on each call and ran at a fifth of memory bandwidth; with the weight
  stored [out, in] the few-row product takes the form that streams it fastest
  (gemmax.ops.few_rows). Many rows: a plain x @ wt^T.
  """
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1])
  if x2.shape[0] <= FEW_ROWS:
    y = few_rows_product(dot2d, x2, wt, preferred_element_type=preferred_element_type)
  else:
    y = dot2d(x2, wt, w_t=True, preferred_element_type=preferred_element_type)
  return y.reshape(*lead, wt.shape[0])


class Linear(nnx.Module):
  """y = x @ kernel, kernel [in, out] stored in param_dtype, computed in `dtype`.

  `axes` are the logical axis names of the kernel (see gemmax.sharding). `kernel_layout` names
  the stored layout; the sampler's decode copy holds [out, in] ones (gemmax.sampling.layout).
  """

  kernel_layout = "in_out"

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str, str],
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
  ):
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype
    self.kernel = nnx.Param(
      _init(rngs.params(), (in_features, out_features), param_dtype), axes=axes
    )

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    """`out_dtype` (default `dtype`): float32 hands an adapter the unrounded accumulator."""
    return matmul(
      x.astype(self.dtype), self.kernel[...].astype(self.dtype), preferred_element_type=out_dtype
    )


def project_shared(mods, x: jax.Array) -> tuple:
  """`tuple(m(x) for m in mods)` for projections of one input (q/k/v, gate/up). A module class
  may define `shared_input(mods, x)` to share work between them: LoRA adapters take their
  down-projections as one product."""
  share = getattr(type(mods[0]), "shared_input", None)
  if share is not None and all(type(m) is type(mods[0]) for m in mods):
    return share(mods, x)
  return tuple(m(x) for m in mods)


class Embed(nnx.Module):
  """Token embedding [vocab, hidden]; `attend` is the tied output projection."""

  def __init__(self, vocab_size: int, hidden_size: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = nnx.Param(
      _init(rngs.params(), (vocab_size, hidden_size), param_dtype), axes=("vocab", "embed")
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, h: jax.Array) -> jax.Array:
    """[..., hidden] -> [..., vocab] logits in float32."""
    return matmul_t(h, self.embedding[...].astype(h.dtype), preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32.

  offset (Gemma): y = x / rms(x) * (1 + w), cast at the end (weights stored as offsets from 1).
  else (Llama):   y = w * cast(x / rms(x)), cast before the scale.
  """

  def __init__(self, dim: int, *, eps: float, offset: bool, param_dtype):
    self.eps, self.offset = eps, offset
    init = jnp.zeros if offset else jnp.ones
    self.scale = nnx.Param(init((dim,), param_dtype), axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    if self.offset:
      return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * y.astype(x.dtype)


_GELU_TANH = functools.partial(jax.nn.gelu, approximate=True)
# The MLP activations by their HF names (ModelConfig accepts exactly these).
ACTIVATIONS = {
  "gelu_pytorch_tanh": _GELU_TANH,
  "gelu_tanh": _GELU_TANH,
  "gelu_new": _GELU_TANH,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


def activation(name: str):
  """The MLP activation as a float32 function."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported hidden activation {name!r}")
  return ACTIVATIONS[name]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated(act, gate: jax.Array, up: jax.Array) -> jax.Array:
  """act(gate) * up, computed in float32 and rounded once to the inputs' dtype.

  That is torch's arithmetic for bf16 tensors (a bf16 chain of jnp ops rounds, or not, at XLA's
  discretion, and ran 3x slower on XLA:CPU). The custom VJP keeps only `gate` and `up` for the
  backward and recomputes act there: autodiff saved act's float32 intermediates (a [tokens, mlp]
  f32 array per layer written and read back) and spread the gradient over more passes.
  """
  f32 = jnp.promote_types(gate.dtype, jnp.float32)
  return (act(gate.astype(f32)) * up.astype(f32)).astype(gate.dtype)


def _gated_fwd(act, gate, up):
  return gated(act, gate, up), (gate, up)


def _gated_bwd(act, res, d_out):
  # The first barrier stops XLA from merging the recomputed act with the forward's (CSE), which
  # would store it in float32 after all. The second gives d_up its own copy of the inputs, so
  # each gradient recomputes act in its own pass: with one shared act (or tanh), XLA wrote it out
  # as a [tokens, mlp] float32 array for the two passes to read back (5% of a bf16 LoRA step).
  gate, up, d_out = jax.lax.optimization_barrier((*res, d_out))
  gate2, d_out2 = jax.lax.optimization_barrier((gate, d_out))
  f32 = jnp.promote_types(gate.dtype, jnp.float32)
  _, act_vjp = jax.vjp(act, gate.astype(f32))
  d_gate = act_vjp(d_out.astype(f32) * up.astype(f32))[0].astype(gate.dtype)
  d_up = (d_out2.astype(f32) * act(gate2.astype(f32))).astype(up.dtype)
  return d_gate, d_up


gated.defvjp(_gated_fwd, _gated_bwd)


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)) — GeGLU(tanh) for Gemma, SwiGLU for Llama."""

  def __init__(self, config, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
    self.up_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
    self.down_proj = Linear(f, d, axes=("mlp", "embed"), **kw)
    self.act = activation(config.hidden_activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(gated(self.act, *project_shared((self.gate_proj, self.up_proj), x)))

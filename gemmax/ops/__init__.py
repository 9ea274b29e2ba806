"""Attention operators (the einsum oracle in `reference`, plain XLA, XLA:CPU, chunked XLA, Pallas
kernels and their dispatcher) and the XLA:CPU forms of the model's products (`matmul`, `fused`)."""

from gemmax.ops.attention import IMPLS, attention

__all__ = ["attention", "IMPLS"]

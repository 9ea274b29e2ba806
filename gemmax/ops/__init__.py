"""Attention operators: XLA reference, chunked XLA, Pallas kernels and their dispatcher."""

from gemmax.ops.attention import IMPLS, attention

__all__ = ["attention", "IMPLS"]

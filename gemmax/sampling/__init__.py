"""Prefill/decode sampling with a KV cache."""

from gemmax.sampling.sampler import SampleResult, Sampler
from gemmax.sampling.select import choose

__all__ = ["Sampler", "SampleResult", "choose"]

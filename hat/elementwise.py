"""Deprecated alias of `hat.kernels.elementwise`, where the generic elementwise-rule application now lives.

Kept only for `bench/throughput.py`, which still imports `hat.elementwise`; import `hat.kernels.elementwise`.
"""

from hat.kernels.elementwise import (
    Pointwise,
    chunked_delta,
    chunked_per_sample_drive,
    dense_delta,
    dense_per_sample_drive,
    dense_per_synapse,
)

__all__ = ["Pointwise", "chunked_delta", "chunked_per_sample_drive", "dense_delta", "dense_per_sample_drive",
           "dense_per_synapse"]

"""The decoder's op seam: `get_ops(device)` picks the implementation (see ops/base.py).

- `cpu` → `NativeOps` (Paddle's operators; the CPU path, unchanged).
- `gpu`/`gpu:N`/`cuda` → `CudaOps` (our sm_90 kernels + cuBLAS via paddle.matmul), because
  PyPI's paddlepaddle-gpu has no Hopper kernels for its own element-wise ops.
- `RLFLEET_OPS=native|cuda` overrides the choice (native on a GPU is right where Paddle's
  own build has kernels for the chip, e.g. Paddle's CUDA 12.6+ packages).

`CudaOps` is imported only when chosen: importing this package needs no GPU.
"""

from __future__ import annotations

import os

from engine_pod.model.ops.base import DecoderOps
from engine_pod.model.ops.native import NativeOps

__all__ = ["DecoderOps", "NativeOps", "get_ops", "ops_kind"]


def ops_kind(device: str) -> str:
    """'native' or 'cuda' for a Paddle device string."""
    forced = os.environ.get("RLFLEET_OPS", "").strip().lower()
    if forced in ("native", "cuda"):
        return forced
    if forced:
        raise ValueError(f"RLFLEET_OPS must be 'native' or 'cuda', got {forced!r}")
    return "native" if device.startswith("cpu") else "cuda"


def get_ops(device: str = "cpu") -> DecoderOps:
    if ops_kind(device) == "native":
        return NativeOps()
    from engine_pod.model.ops.cuda import CudaOps  # loads the kernel library

    return CudaOps()

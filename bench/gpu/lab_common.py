"""What the device labs (kernel_lab.py, gemm_lab.py) share: the kernel library built with nvcc
and loaded without Paddle, PyTorch tensors' pointers and stream, check records, and the GPU
time of a launch inside a CUDA graph. Needs a GPU and PyTorch (the device image has both)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "engine_pod", "model", "ops", "kernels.cu")
RESULTS: dict = {"device": torch.cuda.get_device_name(0), "checks": {}, "timing": {}}


def build(out: str, sigs: dict[str, list[Any]], reuse: bool = False) -> ctypes.CDLL:
    """kernels.cu built into `out` with ops/build.py's nvcc flags (or, with `reuse`, `out`
    as it is when it exists and loads), its functions typed by `sigs`."""
    lib = None
    if reuse and os.path.exists(out):
        try:
            lib = ctypes.CDLL(os.path.abspath(out))
            print(f"loaded {out}", flush=True)
        except OSError as e:
            print(f"cannot load {out} ({e}): building", flush=True)
            out = "/tmp/rl_lab_rebuilt.so"
    if lib is None:
        cmd = ["nvcc", "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
               "-gencode=arch=compute_90,code=sm_90", "-o", out, SRC]  # fmt: skip
        t = time.time()
        subprocess.run(cmd, check=True)
        print(f"nvcc {time.time() - t:.1f} s", flush=True)
        lib = ctypes.CDLL(os.path.abspath(out))
    for name, args in sigs.items():
        if not hasattr(lib, name):  # a library built before the function existed
            print(f"(library without {name})", flush=True)
            continue
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int
    return lib


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def stream() -> int:
    """PyTorch's current stream (a graph capture's, when capturing): read at launch time."""
    return torch.cuda.current_stream().cuda_stream


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS["checks"].setdefault(name, []).append({"ok": bool(ok), "detail": detail})
    print(f"{'ok ' if ok else 'BAD'} {name} {detail}", flush=True)


def graph_us(fn: Callable[[], Any], launches: int = 20, replays: int = 10) -> float:
    """GPU µs per call of `fn`, from a CUDA graph of `launches` calls replayed."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
        for _ in range(launches):
            fn()
    torch.cuda.synchronize()
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(replays):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) * 1000 / (launches * replays)

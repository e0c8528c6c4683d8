"""cuBLASLt GEMMs with the algorithm chosen by measurement (ops/lt_gemm.cuh).

At 17-64-row decode steps a decoder's GEMMs are latency-bound, and the algorithm cuBLASLt's
heuristic picks first is not always the fastest one it has for the shape (H200, 0.5B shape,
cuBLASLt 13.1: 0.5-0.7 us off gate_up and down). `LtGemms` lists cuBLASLt's candidates for a
shape once (the heuristic's answers, and each with split-K), times each with cold weights on
the GPU, keeps the fastest (the heuristic's first unless another is faster by more than
`MARGIN`) and runs it from then on. Opt-in (RLFLEET_LT_GEMM_ROWS): in the engine, Paddle's
cuBLAS 12.1 path was still faster at 64 rows (bench/gpu/RESULTS.md round 9).

The choice is made per CUDA graph bucket: a step of m rows runs the algorithm chosen for the
bucket it would be padded to (measured at the bucket's row count), so an eager step and the
graph replay of its bucket run the same kernel, and the eager warm-up before a capture makes
the choice the capture reuses (timing never happens inside a capture).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import paddle

log = logging.getLogger(__name__)

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
_SIGNATURES = {
    "rl_lt_available": [],
    "rl_lt_candidates": [_I, _I, _I, _I, _L, _P, _P, _P],
    "rl_lt_time": [_I, _I, _I, _P, _I, _P, _L, _P, _P],
    "rl_lt_check": [_I, _I, _I, _P, _L],
    "rl_lt_gemm": [_P, _P, _P, _I, _I, _I, _P, _P, _L, _P],
}
ALGO_BYTES = 64  # cublasLtMatmulAlgo_t
MAX_CANDIDATES = 96
WORKSPACE_BYTES = 8 << 20  # split-K's float32 partials of a 64-row step fit easily
MARGIN = 0.02  # another algorithm replaces the heuristic's first only when this much faster
CAPTURING = 900  # rl_lt_time's answer while the caller's stream is being captured
CONFIG_FIELDS = ("workspace", "algo", "tile", "splitk", "reduction", "stages", "cluster", "swizzle")


class _Capturing(Exception):
    pass


@dataclass
class LtChoice:
    """The algorithm kept for one (bucket, N, K): its 64 bytes, configuration and timings."""

    algo: ctypes.Array
    config: dict[str, int]
    us: float
    heuristic_us: float
    candidates: int


def pick(timings: Sequence[float], margin: float = MARGIN) -> int:
    """Index of the algorithm to keep: the fastest, unless the heuristic's first (index 0) is
    within `margin` of it; -1 timings (declined) never win. -1 when none ran."""
    ran = [(us, i) for i, us in enumerate(timings) if us > 0]
    if not ran:
        return -1
    best_us, best = min(ran)
    if timings[0] > 0 and timings[0] <= best_us * (1 + margin):
        return 0
    return best


class LtGemms:
    """y = x . w^T for bf16 steps of more than `low` and at most `high` rows, on cuBLASLt with
    the algorithm measured fastest for (the step's graph bucket, N, K). `matmul` returns None
    where it does not take a product (then the caller runs cuBLAS)."""

    def __init__(self, lib: ctypes.CDLL, low: int, high: int, buckets: Sequence[int]) -> None:
        self.lib, self.low, self.high = lib, low, high
        self.buckets = sorted(buckets)
        for name, args in _SIGNATURES.items():
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_int
        self.error = int(lib.rl_lt_available()) if high > low else -1
        lib.rl_lt_version.restype = ctypes.c_longlong
        self.version = int(lib.rl_lt_version()) if self.error == 0 else 0  # e.g. 120103
        self.choices: dict[tuple[int, int, int], LtChoice | None] = {}
        self._runs: dict[tuple[int, int, int], bool] = {}  # the bucket's algorithm at m rows
        self.workspace = paddle.empty([WORKSPACE_BYTES], dtype="uint8") if self.usable else None
        if high > low and self.error:
            log.warning("cuBLASLt not usable (rl_lt_available %d): cuBLAS for every GEMM",
                        self.error)  # fmt: skip

    @property
    def usable(self) -> bool:
        return self.high > self.low and self.error == 0

    def summary(self) -> dict:
        """What was chosen, for benchmark records: cuBLASLt's version and each choice."""
        return {"error": self.error, "version": self.version, "rows": [self.low + 1, self.high],
                "choices": {f"{m}x{n}x{k}": None if c is None else
                            {"us": round(c.us, 2), "heuristic_us": round(c.heuristic_us, 2),
                             "candidates": c.candidates, **c.config}
                            for (m, n, k), c in self.choices.items()}}  # fmt: skip

    def takes(self, m: int) -> bool:
        return self.usable and self.low < m <= self.high

    def bucket(self, m: int) -> int:
        return next((b for b in self.buckets if b >= m), m)

    def choice(self, m: int, n: int, k: int, stream: int) -> LtChoice | None:
        """The algorithm for m rows: the one kept for m's bucket (measured on first use), if it
        runs at m rows; None: cuBLAS."""
        key = (self.bucket(m), n, k)
        if key not in self.choices:
            try:
                self.choices[key] = self._measure(*key, stream)
            except _Capturing:  # not measured inside a graph capture: cuBLAS this time
                return None
        c = self.choices[key]
        if c is None or m == key[0]:
            return c
        if (m, n, k) not in self._runs:
            rc = self.lib.rl_lt_check(m, n, k, c.algo, WORKSPACE_BYTES)
            self._runs[(m, n, k)] = rc == 0
        return c if self._runs[(m, n, k)] else None

    def _measure(self, m: int, n: int, k: int, stream: int) -> LtChoice | None:
        lib = self.lib
        algos = ctypes.create_string_buffer(ALGO_BYTES * MAX_CANDIDATES)
        info = (ctypes.c_longlong * (8 * MAX_CANDIDATES))()
        count = ctypes.c_int(0)
        rc = lib.rl_lt_candidates(m, n, k, MAX_CANDIDATES, WORKSPACE_BYTES, algos, info,
                                  ctypes.byref(count))  # fmt: skip
        if rc or count.value == 0:
            log.warning("cuBLASLt has no candidates for %dx%dx%d (rc %d): cuBLAS", m, n, k, rc)
            return None
        us = (ctypes.c_float * count.value)()
        ws = self.workspace
        assert ws is not None
        rc = lib.rl_lt_time(m, n, k, algos, count.value, ws.data_ptr(), WORKSPACE_BYTES, us,
                            stream)  # fmt: skip
        if rc == CAPTURING:
            raise _Capturing
        i = pick(list(us)) if rc == 0 else -1
        if i < 0:
            log.warning("cuBLASLt timing for %dx%dx%d failed (rc %d): cuBLAS", m, n, k, rc)
            return None
        raw = algos.raw[ALGO_BYTES * i : ALGO_BYTES * (i + 1)]
        config = dict(zip(CONFIG_FIELDS, info[8 * i : 8 * i + 8], strict=True))
        choice = LtChoice(ctypes.create_string_buffer(raw, ALGO_BYTES), config, float(us[i]),
                          float(us[0]), count.value)  # fmt: skip
        log.info("cuBLASLt %dx%dx%d: candidate %d of %d, %.2f us (heuristic's first %.2f): %s",
                 m, n, k, i, count.value, us[i], us[0], config)  # fmt: skip
        return choice

    def matmul(self, x: paddle.Tensor, w: paddle.Tensor, stream: int) -> paddle.Tensor | None:
        """x[m, k] . w[n, k]^T as bf16 [m, n] when this takes it (bf16, m in range, cuBLASLt
        has an algorithm); None: not run (the caller runs cuBLAS)."""
        m, k, n = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
        if not self.takes(m) or x.dtype != paddle.bfloat16 or w.dtype != paddle.bfloat16:
            return None
        if (c := self.choice(m, n, k, stream)) is None:
            return None
        y = paddle.empty([m, n], dtype="bfloat16")
        ws = self.workspace
        assert ws is not None
        rc = self.lib.rl_lt_gemm(y.data_ptr(), x.data_ptr(), w.data_ptr(), m, n, k, c.algo,
                                 ws.data_ptr(), WORKSPACE_BYTES, stream)  # fmt: skip
        if rc:
            raise RuntimeError(f"rl_lt_gemm {m}x{n}x{k}: cuBLAS status {rc - 1000}")
        return y

"""`CudaOps`: the decoder's non-GEMM ops as our own CUDA kernels (ops/kernels.cu).

Route: the kernels are compiled by nvcc into a plain shared library (ops/build.py; sm_90
by default) that links the CUDA runtime statically, loaded with ctypes, and launched on
the raw device pointers of Paddle tensors (`Tensor.data_ptr()`) on Paddle's current CUDA
stream (`paddle.device.cuda.current_stream().cuda_stream`). Paddle allocates every tensor
(`paddle.empty`, never a Paddle element-wise kernel) and runs the GEMMs (`paddle.matmul`
→ cuBLAS); host↔device traffic is plain copies. So the path needs from Paddle only what
works on a chip its build has no kernels for. Importing this module needs no GPU; the
library is loaded when `CudaOps()` is built.
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from engine_pod.model.base import SamplingParams
from engine_pod.model.hf_config import ModelConfig
from engine_pod.model.ops import build as ops_build
from engine_pod.model.ops.base import DecoderOps
from engine_pod.model.ops.lt_gemm import LtGemms
from engine_pod.model.safetensors_io import float32_to_bf16
from engine_pod.model.sampler import device_rows
from engine_pod.model.step_plan import StepPlan

log = logging.getLogger(__name__)
_P, _I, _I64, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SIGNATURES: dict[str, list[Any]] = {
    "rl_version": [],
    "rl_sync": [],
    "rl_zero": [_P, _I64, _P],
    "rl_gather_rows": [_P, _P, _P, _I, _I, _I, _P],
    "rl_rms_norm": [_P, _P, _P, _P, _P, _P, _I, _I, _F, _I, _P],
    "rl_add_bias": [_P, _P, _I64, _I, _I, _P],
    "rl_silu_mul": [_P, _P, _I64, _I, _I, _P],
    "rl_cast_f32": [_P, _P, _I64, _I, _P],
    "rl_qkv_rope_cache": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _P],
    "rl_paged_attention_smem": [_I, _I, _I],
    "rl_paged_attention": [_P, _P, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _I, _F, _I, _P],
    "rl_argmax": [_P, _P, _I, _I, _I, _P, _P, _I, _P],
    "rl_select_part_bytes": [],
    "rl_h2d": [_P, _P, _I64, _P],
    "rl_d2d": [_P, _P, _I64, _P],
    "rl_d2h": [_P, _P, _I64, _P],
    "rl_host_alloc": [_P, _I64],
    "rl_host_free": [_P],
    "rl_gemm_acc_available": [],
    "rl_gemm_acc": [_P, _P, _P, _I, _I, _I, _P],
    "rl_qkv_rope_cache_rms": [_P] * 11 + [_I, _F] + [_I] * 6 + [_P],
    "rl_silu_mul_rms": [_P, _P, _P, _I, _F, _I, _I, _I, _P],
    "rl_event_create": [_P],
    "rl_event_record": [_P, _P],
    "rl_event_sync": [_P],
    "rl_sample": [_P, _P, _P, _P, _I, _I, _I, _P, _P, _I, _P],
    "rl_head_select": [_P] * 6 + [_I] * 4 + [_P, _P, _P],
    "rl_head_select_part_bytes": [_I, _I, _I],
    "rl_paged_attention_v3": [_P] * 7 + [_I, _P, _P] + [_I] * 5 + [_F, _I, _I, _I, _P],
    "rl_paged_attention_v4": [_P] * 8 + [_I, _P, _P] + [_I] * 5 + [_F, _I, _I, _I, _P],
    "rl_paged_attention_v5": [_P] * 8 + [_I, _P, _P] + [_I] * 5 + [_F, _I, _I, _I, _I, _I, _P],
    "rl_set_pdl": [_I],
    "rl_gate_up_silu": [_P, _P, _P, _I, _I, _I, _P],
    "rl_gate_up_silu_units": [_I, _I, _I],
    "rl_gemm_config": [_I, _I, _I, _I, _P, _P],
    "rl_gemm_norm": [_P, _P, _P, _P, _P, _F, _P, _I, _I, _I, _P, _P, _P],
    "rl_gemm_norm_silu": [_P, _P, _P, _P, _P, _F, _P, _I, _I, _I, _P, _P, _P],
    "rl_gemm_residual": [_P, _P, _P, _I, _I, _I, _P, _P, _P],
    "rl_stream_gemm": [_P, _P, _P, _I, _I, _I, _I, _P],
    "rl_stream_gemm_splits": [_I, _I, _I],
    "rl_stream_gemm_rope": [_P, _P, _P, _I, _I, _I] + [_P] * 8 + [_I] * 5 + [_P],
    "rl_stream_gemm_parts": [_P, _P, _P, _I, _I, _I, _I, _P],
    "rl_stream_gemm_parts_splits": [_I, _I, _I],
    "rl_rms_norm_parts": [_P, _P, _P, _P, _I, _I, _P, _P, _I, _I, _F, _I, _P],
    "rl_qkv_rope_cache_parts": [_P, _P, _I] + [_P] * 8 + [_I] * 6 + [_P],
    "rl_paged_attention_v2": [
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _I,
        _P,
        _P,
        _I,
        _I,
        _I,
        _I,
        _I,
        _F,
        _I,
        _I,
        _I,
        _P,
    ],
}
ATTN_KEYS_PER_SPLIT = int(os.environ.get("RLFLEET_ATTN_KPS", "0"))  # 0: by batch size
# decode-only bf16 steps of at most this many rows (head_dim 64) run attention v5 with every
# tile of a split in flight and half of them computed at once, on longer splits
# (`deep_split`); larger steps: short splits two tiles deep. 0: never
ATTN_DEEP_ROWS = int(os.environ.get("RLFLEET_ATTN_DEEP_ROWS", "64"))
# their split length instead of `deep_split`'s (0), e.g. 1024: one split over a 1024-key table
ATTN_DEEP_KEYS = int(os.environ.get("RLFLEET_ATTN_DEEP_KEYS", "0"))
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int32": 4}
_CODE = {"float32": 0, "bfloat16": 1, "float16": 2}
MIN_STRIDE = 8  # smallest block-table row of a step (blocks)
# zeroed uint32 counters the kernels that merge their blocks' partial results in the same
# launch use (the last block of a group merges and resets its counter): attention's splits of
# a (token, kv head), then token selection's chunks of a row
ATTN_COUNTERS = 1 << 15
SELECT_COUNTERS = 1 << 15
# token selection splits each row over enough blocks to fill the GPU this many times
SELECT_FILL = int(os.environ.get("RLFLEET_SELECT_FILL", "4"))
# decode steps of at most this many rows run their layers on the fused skinny GEMMs
# (gemm.cuh: norm / SiLU / residual inside tensor-core GEMMs; bf16 only); larger steps on
# cuBLAS + separate kernels, which are faster there (bench/gpu/RESULTS.md). 0: never.
FUSED_GEMM_ROWS = int(os.environ.get("RLFLEET_FUSED_GEMM_ROWS", "16"))
_GEMM_NORM, _GEMM_RES, _GEMM_NORM_SILU = 1, 2, 5  # gemm.cuh flags: prologue / epilogue
# bf16 GEMMs of at most this many rows (and more than the fused path's) run on the streaming
# kernel (gemm_stream.cuh: weight copies start before the previous kernel ends) when it takes
# the shape (a decoder's qkv / o / down; not gate_up or the LM head); the rest on cuBLAS. 0: never.
# (H200 engine, 0.5B shape: -76..-84 us a step at 32 rows, +13..+35 at 64: RESULTS.md round 6.)
STREAM_GEMM_ROWS = int(os.environ.get("RLFLEET_STREAM_GEMM_ROWS", "32"))
# bf16 steps of at most this many rows (and more than the fused path's) run the MLP's gate_up
# GEMM and SiLU * mul as one kernel of ours (gemm_silu.cuh: weight copies start before the
# previous kernel ends, SiLU * mul in the epilogue) where it takes the shape; the rest on
# cuBLAS + rl_silu_mul. 0: never. (H200 engine, 0.5B shape: -14 us a step at 32 rows, +82 at
# 64, where mma.sync's products cost more than the launch saved: RESULTS.md round 7.)
GATE_UP_SILU_ROWS = int(os.environ.get("RLFLEET_GATE_UP_SILU_ROWS", "32"))
# how its split-K partial sums are added: "next" (the default) by the kernel that reads the
# product next (the qkv projection's RoPE + KV write, the residual add + RMSNorm after o and
# down: `linear_deferred`, `qkv_rope_linear`), "cluster" inside the GEMM (distributed shared
# memory; H200 round 5: slower than cuBLAS at 64 rows)
STREAM_MERGE = os.environ.get("RLFLEET_STREAM_MERGE", "next")
# "cluster" merge: the qkv projection's GEMM also does qkv bias + RoPE + the KV write (one
# launch a layer fewer); 0: a separate rl_qkv_rope_cache launch
STREAM_ROPE = os.environ.get("RLFLEET_STREAM_ROPE", "1") != "0"
# bf16 GEMMs of steps of more rows than the fused path's and at most this many that no kernel
# of ours takes run on cuBLASLt with the algorithm measured fastest for (the step's graph
# bucket, N, K) (lt_gemm.py; cuBLASLt from RLFLEET_CUBLASLT, else libcublasLt.so.12 / .13).
# 0 (the default): every GEMM on cuBLAS (paddle.matmul). H200 engine, 0.5B shape (RESULTS.md
# round 9): at 64 rows +60 us a step with cuBLASLt 13.1's best and +235 with 12.1's (Paddle's
# cuBLAS 12.1 path is faster there than any Lt candidate measured); -34 us GPU at 48 rows
# (13.1). RLFLEET_LT_LOGITS=0 keeps the LM head on cuBLAS.
LT_GEMM_ROWS = int(os.environ.get("RLFLEET_LT_GEMM_ROWS", "0"))
LT_LOGITS = os.environ.get("RLFLEET_LT_LOGITS", "1") != "0"
# bf16 steps of at most this many sampled rows draw their tokens from the LM head in one
# kernel of ours (head_select.cuh: each logit, rounded to bf16 as the GEMM would write it,
# goes straight into its row's argmax / Gumbel-max draw; the [S, vocab] logits are written
# only for rows with a top-k / top-p cut, which sample_k then draws, or when the caller needs
# them); larger steps: cuBLAS logits + rl_sample. 0 (the default): never. H200 lab, Qwen2's
# 272 MB head (RESULTS.md round 10): 98 / 107 / 130 us at 1 / 32 / 64 rows against 83 / 85 /
# 90 for cuBLAS + rl_sample — its register-staged weight reads top out at ~3.4 TB/s where
# cuBLAS's TMA copies reach 4.2.
HEAD_SELECT_ROWS = int(os.environ.get("RLFLEET_HEAD_SELECT_ROWS", "0"))
# Folded norms (ops/base.py; llama.py `_forward_folded`): bf16 weights get each layer's two
# norm weights folded into qkv / gate_up, and steps of more rows than the fused / streaming
# kernels take run their layers as four cuBLAS GEMMs on the raw residual stream (o and down
# adding into it: rl_gemm_acc), RoPE + KV write and SiLU * mul scaling by 1 / rms — no norm
# kernel stranded behind a cuBLAS GEMM. "0": off. H200 engine, 60 look-ahead steps (RESULTS.md
# round 11): B = 48 / 64 / 128 1.21 / 1.22 / 1.58 ms a step against 1.23 / 1.26 / 1.63 off.
FOLD_NORMS = os.environ.get("RLFLEET_FOLD_NORMS", "1") != "0"
_GREEDY = SamplingParams(temperature=0.0)


def stride_bucket(need: int) -> int:
    """Block-table row length of a step whose longest sequence needs `need` blocks: the next
    power of two (at least MIN_STRIDE). Paged attention's split-K partition follows the row
    length, so eager steps and CUDA-graph replays (which must fix it) split and round alike."""
    n = max(MIN_STRIDE, need)
    return 1 << (n - 1).bit_length()


def deep_split(tokens: int) -> tuple[int, int]:
    """(keys a split, tiles in flight) of a deep-split decode step of `tokens` rows: 256 keys
    up to 16 rows, 1024 above (one split a row up to 1024 keys: no merge). On the H200 engine
    (bench/gpu/RESULTS.md round 7) 1024-key splits beat 512 at 17-64 rows for 512-, 1000-
    and 1900-token contexts (a split's merge costs more than the parallelism it buys) and
    2048 at 32 rows; 256 stays faster up to 16 rows. Changes only at a graph bucket."""
    return (256, 4) if tokens <= 16 else (1024, 8)


def keys_per_split(version: str, tokens: int) -> int:
    """Split length of attention v4 / v5 for a step of `tokens` rows: short splits (more
    blocks) for small batches, long ones (fewer partials to merge) for large (H200, 512-token
    contexts: bench/gpu/RESULTS.md). The thresholds are graph batch buckets, so a batch and
    the bucket it is padded to in a CUDA graph split alike."""
    if version == "v5":
        return 128 if tokens <= 64 else 256
    if version == "v4":
        return 64 if tokens <= 32 else (128 if tokens <= 64 else 256)
    return 64


class CudaError(RuntimeError):
    pass


@dataclass
class SplitKParts:
    """A GEMM's product left unreduced: float32 split-K partial sums [splits, rows, cols]
    (gemm_stream.cuh, PARTS mode). The kernel that reads it sums them in split order and
    rounds once — the value the GEMM would have written."""

    t: paddle.Tensor
    splits: int
    rows: int
    cols: int


def load_library(path: str | None = None, build_if_missing: bool = True) -> ctypes.CDLL:
    """Load the kernel library (building it with nvcc first if it is missing or stale)."""
    path = path or ops_build.lib_path()
    if build_if_missing and ops_build.is_stale(path) and not os.environ.get("RLFLEET_OPS_LIB"):
        ops_build.build(path)
    if not os.path.exists(path):
        raise CudaError(
            f"kernel library {path} not found: run python -m engine_pod.model.ops.build"
        )
    lib = ctypes.CDLL(path)
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    return lib


_BF16_BITS_OK: bool | None = None


def _bf16_from_bits_ok() -> bool:
    """Does `paddle.to_tensor(uint16 bits, dtype="bfloat16")` take the bits as bf16 (Paddle 2.x)?"""
    global _BF16_BITS_OK
    if _BF16_BITS_OK is None:
        probe = np.array([1.5, -2.25, 3.0e38, 1e-3], dtype=np.float32)
        try:
            t = paddle.to_tensor(float32_to_bf16(probe), dtype="bfloat16", place=paddle.CPUPlace())
            back = t.astype("float32").numpy()
            want = (float32_to_bf16(probe).astype(np.uint32) << 16).view(np.float32)
            _BF16_BITS_OK = bool(t.dtype == paddle.bfloat16 and np.array_equal(back, want))
        except Exception:
            _BF16_BITS_OK = False
    return _BF16_BITS_OK


def dtype_name(t: paddle.Tensor) -> str:
    for name in _CODE:
        if t.dtype == getattr(paddle, name):
            return name
    raise CudaError(f"unsupported dtype {t.dtype}")


@dataclass
class CudaStep:
    cfg: ModelConfig
    plan: StepPlan
    rope: Any
    block_size: int
    n_tok: int
    n_sample: int
    meta: paddle.Tensor  # int64 [..] on the device: every index array of the step, packed
    ids: int  # device addresses inside `meta`
    pos: int
    slot_b: int
    slot_o: int
    seq: int
    rows: int
    samp: int  # sampling parameters [S, 5] (sampler.device_rows)
    tables: int
    table_stride: int
    max_ctx: int = 1  # longest context of a token in the step (positions.max() + 1)


class CudaOps(DecoderOps):
    name = "cuda"
    device_greedy = True
    device_sampling = True
    needs_context_slots = False

    def __init__(self, lib_path: str | None = None) -> None:
        self.lib = load_library(lib_path)
        self._stream: int | None = None
        dev = paddle.device.get_device()  # "gpu:N" once paddle.set_device("gpu") ran
        self.device_id = int(dev.split(":")[1]) if dev.startswith("gpu:") else 0
        # paged attention: "auto" (the default: v5 for bf16, else v4), "v5" (v4 on tensor
        # cores: mma for Q K^T and P V), "v4" (split-K over tiles of keys loaded all at once
        # into shared memory, splits merged in the same launch), "v2" (split-K, a warp a
        # key), "v3" (split-K, several keys a warp) or "v1" (one block per token and kv
        # head); force_nsplit pins the split count (tests)
        self.attn_version = os.environ.get("RLFLEET_ATTN", "auto")
        if self.attn_version not in ("auto", "v1", "v2", "v3", "v4", "v5"):
            raise ValueError(f"RLFLEET_ATTN must be auto or v1 ... v5, got {self.attn_version!r}")
        # split length (0: `keys_per_split` by version and batch; fixed while graphs live)
        self.keys_per_split = ATTN_KEYS_PER_SPLIT
        self.force_nsplit: int | None = None
        try:
            props = paddle.device.cuda.get_device_properties(self.device_id)
            self.num_sms = int(props.multi_processor_count)
        except Exception:
            self.num_sms = 132
        self._select_part_bytes = int(self.lib.rl_select_part_bytes())
        # programmatic dependent launches (sm_90): each kernel of ours starts while the one
        # before it finishes (RLFLEET_PDL=0: plain launches)
        self.pdl = os.environ.get("RLFLEET_PDL", "1") != "0"
        self.lib.rl_set_pdl(int(self.pdl))
        from engine_pod.model.cuda_graphs import BATCH_BUCKETS  # (it imports this module)

        # rounded down to a graph bucket: a batch and its padded graph must decide alike
        def bucket_floor(rows: int) -> int:
            return max([0] + [b for b in BATCH_BUCKETS if b <= rows])

        self.fused_gemm_rows = bucket_floor(FUSED_GEMM_ROWS)
        self._fused_ok: dict[tuple[int, ...], bool] = {}
        self.stream_gemm_rows = bucket_floor(STREAM_GEMM_ROWS)
        self.attn_deep_rows = bucket_floor(ATTN_DEEP_ROWS)
        self.gate_up_silu_rows = bucket_floor(GATE_UP_SILU_ROWS)
        if STREAM_MERGE not in ("next", "cluster"):
            raise ValueError(f"RLFLEET_STREAM_MERGE must be next or cluster, got {STREAM_MERGE!r}")
        self.stream_merge = STREAM_MERGE
        self._stream_splits: dict[tuple[int, int, int], int] = {}
        self.head_select_rows = bucket_floor(HEAD_SELECT_ROWS)
        self._head_part: dict[tuple[int, int, int], int] = {}
        # attention's, selection's, then rl_head_select's one
        self.counters = self.zeros([ATTN_COUNTERS + SELECT_COUNTERS + 1], "int32")
        self.lt = LtGemms(self.lib, self.fused_gemm_rows, bucket_floor(LT_GEMM_ROWS), BATCH_BUCKETS)
        # the folded-norm path's row floor: steps the fused / streaming kernels do not take
        self.folded_min_rows = max(self.fused_gemm_rows, self.stream_gemm_rows,
                                   self.gate_up_silu_rows) + 1  # fmt: skip
        self._fold: bool | None = None if FOLD_NORMS else False  # None: not asked yet
        self.synchronize()

    def _gemm_acc_ready(self) -> bool:
        """Can rl_gemm_acc run (cuBLAS opened by its soname, a handle made)? Paddle loads
        cuBLAS on its first matmul, so one runs first."""
        a = paddle.to_tensor(np.ones((8, 8), np.float32), place=paddle.CPUPlace())
        a = a.cuda(self.device_id)  # a copy: no Paddle GPU kernel but the matmul
        paddle.matmul(a, a)
        rc = int(self.lib.rl_gemm_acc_available())
        if rc:
            log.warning("RLFLEET_FOLD_NORMS: cuBLAS for rl_gemm_acc unavailable (%d): off", rc)
        return rc == 0

    # ------------------------------------------------------------------ plumbing
    @property
    def stream(self) -> int:
        if self._stream is None:
            self.refresh_stream()
        return self._stream  # type: ignore[return-value]

    def refresh_stream(self) -> int:
        """Paddle's current CUDA stream (launches must be ordered with its matmuls)."""
        self._stream = int(paddle.device.cuda.current_stream().cuda_stream)
        return self._stream

    def _call(self, name: str, *args: Any) -> None:
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            raise CudaError(f"{name}: CUDA error {rc}")

    @staticmethod
    def _empty(shape: list[int], dtype: str) -> paddle.Tensor:
        return paddle.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        self._call("rl_sync")

    # ------------------------------------------------------------------ memory
    def to_device(self, a: np.ndarray, dtype: str) -> paddle.Tensor:
        # cast on the host (Paddle's GPU cast kernel may be missing), then a plain copy
        if dtype == "bfloat16" and _bf16_from_bits_ok():
            # numpy bf16 bits (round to nearest even): Paddle 2.6's own float→bf16 in
            # to_tensor is a per-element Python loop (minutes for a 0.5B model)
            t = paddle.to_tensor(float32_to_bf16(a), dtype="bfloat16", place=paddle.CPUPlace())
        else:
            t = paddle.to_tensor(np.ascontiguousarray(a), dtype=dtype, place=paddle.CPUPlace())
        return t.cuda(self.device_id)

    def zeros(self, shape: list[int], dtype: str) -> paddle.Tensor:
        t = self._empty(shape, dtype)
        self._call("rl_zero", t.data_ptr(), int(np.prod(shape)) * _ITEMSIZE[dtype], self.stream)
        return t

    def upload_int64(self, a: np.ndarray) -> paddle.Tensor:
        t = paddle.to_tensor(np.ascontiguousarray(a, dtype=np.int64), place=paddle.CPUPlace())
        return t.cuda(self.device_id)

    # ------------------------------------------------------------------ step
    @staticmethod
    def pack_step(
        plan: StepPlan,
        block_size: int,
        stride: int | None = None,
        pad_to: int | None = None,
        pad_block: int = 0,
    ) -> tuple[np.ndarray, list[int], int]:
        """Every index array of the step in one int64 buffer: (buffer, offsets, table stride).

        Layout: token ids, positions, slot blocks, slot offsets [T] each; the sequence of
        each token [T]; sample rows [S]; sampling parameters [S, 5]; block tables [items,
        stride] (unused entries `pad_block`). `pad_to` (decode steps only, every row sampled)
        appends greedy rows at position 0 of `pad_block` up to that many: a CUDA graph
        captured for a batch bucket runs a smaller batch.
        """
        items = plan.items
        n_tok = int(plan.token_ids.shape[0])
        lens = [len(w.token_ids) for w in items]
        need = [
            (w.start_pos + n + block_size - 1) // block_size
            for w, n in zip(items, lens, strict=True)
        ]
        stride = stride or stride_bucket(max(need) if need else 1)
        n_rows = pad_to or len(items)
        tables = np.full((n_rows, stride), pad_block, dtype=np.int64)
        for i, w in enumerate(items):
            tables[i, : need[i]] = w.block_table[: need[i]]
        seq = np.repeat(np.arange(len(items), dtype=np.int64), lens)
        params = [w.sampling for w in plan.sample_items]
        counts = [w.num_generated for w in plan.sample_items]
        ids, pos, slot_b, slot_o = (
            plan.token_ids,
            plan.positions,
            plan.slot_blocks,
            plan.slot_offsets,
        )
        rows = plan.sample_rows
        if pad_to:
            pad = pad_to - n_tok
            if pad < 0 or n_tok != len(items) or rows.size != n_tok:
                raise ValueError("pad_to: only decode steps with every row sampled, up to pad_to")
            zeros = np.zeros(pad, dtype=np.int64)
            ids, pos, slot_o = (np.concatenate([a, zeros]) for a in (ids, pos, slot_o))
            slot_b = np.concatenate([slot_b, np.full(pad, pad_block, dtype=np.int64)])
            seq = rows = np.arange(pad_to, dtype=np.int64)
            params += [_GREEDY] * pad
            counts += [0] * pad
        parts = [ids, pos, slot_b, slot_o, seq, rows, device_rows(params, counts).reshape(-1),
                 tables.reshape(-1)]  # fmt: skip
        offs = np.cumsum([0] + [p.size for p in parts])
        buf = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        return buf, [int(o) for o in offs[:-1]], stride

    def begin_step(self, cfg: ModelConfig, plan: StepPlan, rope: Any, block_size: int) -> CudaStep:
        self.refresh_stream()
        buf, offs, stride = self.pack_step(plan, block_size)
        return self.step_on(cfg, plan, rope, block_size, self.upload_int64(buf), offs, stride)

    def step_on(self, cfg: ModelConfig, plan: StepPlan, rope: Any, block_size: int,
                meta: paddle.Tensor, offs: list[int], stride: int) -> CudaStep:  # fmt: skip
        """A step whose indices live in `meta` (a device int64 buffer laid out by pack_step)."""
        base = meta.data_ptr()
        addr = [base + 8 * o for o in offs]
        n_tok = int(plan.token_ids.shape[0])
        max_ctx = int(plan.positions.max()) + 1 if n_tok else 1
        return CudaStep(cfg, plan, rope, block_size, n_tok, int(plan.sample_rows.size), meta,
                        *addr, table_stride=stride, max_ctx=max_ctx)  # fmt: skip

    def copy_into(self, dst: paddle.Tensor, src: paddle.Tensor) -> None:
        """Overwrite device tensor `dst` with `src` (same shape and dtype) on the stream."""
        if list(dst.shape) != list(src.shape) or dst.dtype != src.dtype:
            raise ValueError(f"copy_into: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
        n = int(np.prod(dst.shape)) * _ITEMSIZE[dtype_name(dst)]
        self._call("rl_d2d", dst.data_ptr(), src.data_ptr(), n, self.stream)

    def copy_to_device(self, dst: paddle.Tensor, host: np.ndarray) -> None:
        """Overwrite a device tensor in place from host memory (on the stream; graph inputs)."""
        host = np.ascontiguousarray(host)
        self._call("rl_h2d", dst.data_ptr(), host.ctypes.data, host.nbytes, self.stream)

    def copy_ids(self, dst: paddle.Tensor, src: paddle.Tensor, n: int) -> None:
        """dst[:n] = src[:n] for int64 device tensors, on the stream (a step's sampled ids
        into the next step's input)."""
        if n > int(dst.shape[0]) or n > int(src.shape[0]):
            raise ValueError(f"copy_ids: {n} ids into {dst.shape} from {src.shape}")
        self._call("rl_d2d", dst.data_ptr(), src.data_ptr(), 8 * n, self.stream)

    def pinned_int64(self, n: int) -> np.ndarray:
        """`n` int64 of page-locked host memory (copies to and from it are asynchronous);
        freed when the array is."""
        p = ctypes.c_void_p()
        self._call("rl_host_alloc", ctypes.byref(p), 8 * max(n, 1))
        arr = np.ctypeslib.as_array((ctypes.c_int64 * max(n, 1)).from_address(p.value))[:n]
        weakref.finalize(arr, self.lib.rl_host_free, p)
        return arr

    def ids_to_host(self, dst: np.ndarray, src: paddle.Tensor, n: int) -> None:
        """Queue src[:n] (int64, device) into pinned `dst` on the stream; wait with an event."""
        self._call("rl_d2h", dst.ctypes.data, src.data_ptr(), 8 * n, self.stream)

    def event(self) -> ctypes.c_void_p:
        """A CUDA event (a runner keeps a few for its whole life)."""
        ev = ctypes.c_void_p()
        self._call("rl_event_create", ctypes.byref(ev))
        return ev

    def event_record(self, ev: ctypes.c_void_p) -> None:
        self._call("rl_event_record", ev, self.stream)

    def event_wait(self, ev: ctypes.c_void_p) -> None:
        """Block until the stream reached `ev` (not what was queued after it)."""
        self._call("rl_event_sync", ev)

    def embed(self, table: paddle.Tensor, st: CudaStep) -> paddle.Tensor:
        dt = dtype_name(table)
        h = int(table.shape[1])
        out = self._empty([st.n_tok, h], dt)
        self._call("rl_gather_rows", out.data_ptr(), table.data_ptr(), st.ids, st.n_tok, h,
                   _CODE[dt], self.stream)  # fmt: skip
        return out

    def rms_norm(self, x: paddle.Tensor, w: paddle.Tensor, eps: float) -> paddle.Tensor:
        dt = dtype_name(x)
        n, h = int(x.shape[0]), int(x.shape[1])
        out = self._empty([n, h], dt)
        self._call("rl_rms_norm", out.data_ptr(), None, x.data_ptr(), None, None, w.data_ptr(),
                   n, h, eps, _CODE[dt], self.stream)  # fmt: skip
        return out

    def add_rms_norm(
        self, x: paddle.Tensor, delta: paddle.Tensor | SplitKParts, w: paddle.Tensor, eps: float
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        dt = dtype_name(x)
        n, h = int(x.shape[0]), int(x.shape[1])
        out = self._empty([n, h], dt)
        xp = x.data_ptr()  # the residual stream is updated in place
        self._norm(out, xp, xp, delta, None, w, n, h, eps, dt)
        return x, out

    def _norm(self, out: paddle.Tensor, x_out: int | None, x: int,
              delta: paddle.Tensor | SplitKParts | None, rows: int | None, w: paddle.Tensor,
              n: int, h: int, eps: float, dt: str) -> None:  # fmt: skip
        """rl_rms_norm, or rl_rms_norm_parts when `delta` is a GEMM's unreduced partials."""
        if isinstance(delta, SplitKParts):
            if delta.cols != h:
                raise ValueError(f"partials of {delta.cols} columns added to rows of {h}")
            self._call("rl_rms_norm_parts", out.data_ptr(), x_out, x, delta.t.data_ptr(),
                       delta.splits, delta.rows, rows, w.data_ptr(), n, h, eps, _CODE[dt],
                       self.stream)  # fmt: skip
            return
        self._call("rl_rms_norm", out.data_ptr(), x_out, x,
                   delta.data_ptr() if delta is not None else None, rows, w.data_ptr(), n, h,
                   eps, _CODE[dt], self.stream)  # fmt: skip

    def stream_splits(self, m: int, n: int, k: int, dtype: str) -> int:
        """Split count of x[m, k] . w[n, k]^T on the streaming kernel (`stream_merge`'s form);
        0: not there (cuBLAS). bf16, at most `stream_gemm_rows` rows (a graph bucket, so a
        batch and its padded graph decide alike; a row's result does not depend on the row
        count), a shape it takes."""
        if not 0 < m <= self.stream_gemm_rows or dtype != "bfloat16":
            return 0
        key = (min(m, 33) // 33, n, k)  # its split rule sees only M <= 32 or not
        if key not in self._stream_splits:
            lib, parts = self.lib, self.stream_merge == "next"
            fn = lib.rl_stream_gemm_parts_splits if parts else lib.rl_stream_gemm_splits
            self._stream_splits[key] = int(fn(m, n, k))
        return self._stream_splits[key]

    def stream_gemm(self, m: int, n: int, k: int, dtype: str) -> bool:
        """Does `stream_merge`'s streaming GEMM take this product (see `stream_splits`)?"""
        return self.stream_splits(m, n, k, dtype) > 0

    def _gemm_parts(self, x: paddle.Tensor, w: paddle.Tensor) -> SplitKParts | None:
        """x . w^T as split-K partials ("next" merge), or None where the kernel does not take it."""
        m, k, n = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
        if self.stream_merge != "next" or not (s := self.stream_splits(m, n, k, dtype_name(x))):
            return None
        parts = self._empty([s * m * n], "float32")
        self._call("rl_stream_gemm_parts", parts.data_ptr(), x.data_ptr(), w.data_ptr(), m, n, k,
                   s, self.stream)  # fmt: skip
        return SplitKParts(parts, s, m, n)

    def linear_deferred(
        self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None
    ) -> paddle.Tensor | SplitKParts:
        if b is None and (parts := self._gemm_parts(x, w)) is not None:
            return parts
        return self.linear(x, w, b)

    def linear(
        self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        m, k, n = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
        if self.stream_merge == "cluster" and self.stream_gemm(m, n, k, dtype_name(x)):
            y = self._empty([m, n], "bfloat16")
            self._call("rl_stream_gemm", y.data_ptr(), x.data_ptr(), w.data_ptr(), m, n, k, 0,
                       self.stream)  # fmt: skip
        elif (y := self.lt.matmul(x, w, self.stream)) is None:
            y = paddle.matmul(x, w, transpose_y=True)
        if b is not None:
            dt = dtype_name(y)
            n = int(np.prod(y.shape))
            self._call("rl_add_bias", y.data_ptr(), b.data_ptr(), n, int(b.shape[0]), _CODE[dt],
                       self.stream)  # fmt: skip
        return y

    def linear_silu(self, x: paddle.Tensor, gate_up: paddle.Tensor) -> paddle.Tensor:
        """One kernel (rl_gate_up_silu) for bf16 steps of at most `gate_up_silu_rows` rows (a
        graph bucket; a row's result does not depend on the row count), else the two calls."""
        m, k, n2 = int(x.shape[0]), int(x.shape[1]), int(gate_up.shape[0])
        if 0 < m <= self.gate_up_silu_rows and dtype_name(x) == dtype_name(gate_up) == "bfloat16":
            out = self._empty([m, n2 // 2], "bfloat16")
            rc = self.lib.rl_gate_up_silu(out.data_ptr(), x.data_ptr(), gate_up.data_ptr(), m,
                                          n2 // 2, k, self.stream)  # fmt: skip
            if rc == 0:
                return out
            if rc != 801:
                raise CudaError(f"rl_gate_up_silu: CUDA error {rc}")
        return super().linear_silu(x, gate_up)

    def qkv_rope_linear(
        self,
        h: paddle.Tensor,
        w: paddle.Tensor,
        bias: paddle.Tensor | None,
        st: CudaStep,
        kc: paddle.Tensor,
        vc: paddle.Tensor,
    ) -> paddle.Tensor:
        cfg = st.cfg
        if (parts := self._gemm_parts(h, w)) is not None:
            return self._qkv_rope(None, parts, bias, st, kc, vc)
        m, k, n = int(h.shape[0]), int(h.shape[1]), int(w.shape[0])
        if (
            self.stream_merge != "cluster" or not STREAM_ROPE or 64 % cfg.head_dim
            or not self.stream_gemm(m, n, k, dtype_name(h))
        ):  # fmt: skip
            return self.qkv_rope_cache(self.linear(h, w), bias, st, kc, vc)
        q = self._empty([m, cfg.num_heads, cfg.head_dim], "bfloat16")
        self._call(
            "rl_stream_gemm_rope", q.data_ptr(), h.data_ptr(), w.data_ptr(), m, n, k,
            bias.data_ptr() if bias is not None else None,
            st.rope.cos.data_ptr(), st.rope.sin.data_ptr(), st.pos, st.slot_b, st.slot_o,
            kc.data_ptr(), vc.data_ptr(), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            st.block_size, 0, self.stream,
        )  # fmt: skip
        return q

    def qkv_rope_cache(
        self,
        qkv: paddle.Tensor,
        bias: paddle.Tensor | None,
        st: CudaStep,
        kc: paddle.Tensor,
        vc: paddle.Tensor,
    ) -> paddle.Tensor:
        return self._qkv_rope(qkv, None, bias, st, kc, vc)

    def _qkv_rope(self, qkv: paddle.Tensor | None, parts: SplitKParts | None,
                  bias: paddle.Tensor | None, st: CudaStep, kc: paddle.Tensor,
                  vc: paddle.Tensor, xn: paddle.Tensor | None = None,
                  eps: float = 0.0) -> paddle.Tensor:  # fmt: skip
        """rl_qkv_rope_cache on the qkv product, rl_qkv_rope_cache_parts on its partials, or
        with `xn` (the raw rows it is the product of) rl_qkv_rope_cache_rms."""
        cfg = st.cfg
        dt = dtype_name(kc)
        q = self._empty([st.n_tok, cfg.num_heads, cfg.head_dim], dt)
        tensors = (bias.data_ptr() if bias is not None else None, st.rope.cos.data_ptr(),
                   st.rope.sin.data_ptr(), st.pos, st.slot_b, st.slot_o, kc.data_ptr(),
                   vc.data_ptr())  # fmt: skip
        dims = (st.n_tok, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, st.block_size,
                _CODE[dt], self.stream)  # fmt: skip
        if parts is not None:
            if parts.rows != st.n_tok:
                raise ValueError(f"qkv partials of {parts.rows} rows for a step of {st.n_tok}")
            self._call("rl_qkv_rope_cache_parts", q.data_ptr(), parts.t.data_ptr(), parts.splits,
                       *tensors, *dims)  # fmt: skip
        elif xn is not None:
            self._call("rl_qkv_rope_cache_rms", q.data_ptr(), qkv.data_ptr(), *tensors,
                       xn.data_ptr(), int(xn.shape[1]), eps, *dims)  # fmt: skip
        else:
            self._call("rl_qkv_rope_cache", q.data_ptr(), qkv.data_ptr(), *tensors, *dims)
        return q

    def attention(
        self, q: paddle.Tensor, kc: paddle.Tensor, vc: paddle.Tensor, st: CudaStep
    ) -> paddle.Tensor:
        cfg = st.cfg
        dt = dtype_name(q)
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        out = self._empty([st.n_tok, hq * d], dt)
        scale = 1.0 / float(np.sqrt(d))
        if self.attn_version != "v1":
            # Split-K unless (tokens x kv heads) blocks fill the GPU several times. Splits are
            # fixed runs of ATTN_KEYS_PER_SPLIT keys over the block tables' capacity, so the
            # partition (hence the rounding) is the same for any context length in the
            # buffers: eager steps and CUDA-graph replays give identical results.
            blocks = st.n_tok * hkv
            version = self.attn_version
            if version == "auto":  # tensor cores for bf16 (v5), else v4
                version = "v5" if dt == "bfloat16" else "v4"
            kps = self.keys_per_split or keys_per_split(version, st.n_tok)
            # v5 loads its first tiles before waiting for the previous kernel when every row
            # is its sequence's only token (the only key written this step is each row's last)
            prefetch = int(st.plan.num_decode == st.n_tok)
            stages = 2
            if (version == "v5" and prefetch and d == 64 and hq // hkv <= 16
                    and not self.keys_per_split and not self.force_nsplit
                    and st.n_tok <= self.attn_deep_rows):  # fmt: skip
                kps, stages = deep_split(st.n_tok)
                kps = ATTN_DEEP_KEYS or kps
            if self.force_nsplit:
                nsplit = self.force_nsplit
                kps = -(-st.max_ctx // nsplit)
            elif blocks >= 4 * self.num_sms:  # enough blocks (prefill): no split
                nsplit = 1
            else:
                nsplit = max(1, -(-(st.table_stride * st.block_size) // kps))
            part_acc = part_ml = None
            if nsplit > 1:
                part_acc = self._empty([st.n_tok * hq * nsplit * d], "float32")
                part_ml = self._empty([st.n_tok * hq * nsplit * 2], "float32")
            counters = self.counters.data_ptr() if blocks <= ATTN_COUNTERS else None
            args = (
                q.data_ptr(), kc.data_ptr(), vc.data_ptr(), st.tables, st.table_stride, st.seq,
                st.pos, st.n_tok, hq, hkv, d, st.block_size, scale, nsplit, kps, _CODE[dt],
                self.stream,
            )  # fmt: skip
            parts = (out.data_ptr(), part_acc.data_ptr() if part_acc is not None else None,
                     part_ml.data_ptr() if part_ml is not None else None)  # fmt: skip
            # 801: no instance for this shape → v5 falls back to v4, v4 / v3 to v2, v2 to v1
            chain = [version] + (["v4"] if version == "v5" else []) + ["v2"]
            for fn in dict.fromkeys(f"rl_paged_attention_{v}" for v in chain):
                extra = (counters,) if fn[-2:] in ("v4", "v5") else ()
                a = (*args[:-2], prefetch, stages, *args[-2:]) if fn.endswith("v5") else args
                rc = getattr(self.lib, fn)(*parts, *extra, *a)
                if rc == 0:
                    return out
                if rc != 801:
                    raise CudaError(f"{fn}: CUDA error {rc}")
        self._call(
            "rl_paged_attention", out.data_ptr(), q.data_ptr(), kc.data_ptr(), vc.data_ptr(),
            st.tables, st.table_stride, st.seq, st.pos, st.n_tok, hq, hkv, d, st.block_size,
            scale, _CODE[dt], self.stream,
        )  # fmt: skip
        return out

    def fused_layers(self, st: CudaStep, dtype: str) -> bool:
        """bf16 decode-sized steps (at most `fused_gemm_rows` rows) whose four layer GEMMs
        the skinny kernels take; the rule depends on the row count only through the graph
        buckets' boundaries, so a batch and its padded graph decide alike."""
        cfg = st.cfg
        if not 0 < st.n_tok <= self.fused_gemm_rows or dtype != "bfloat16" or cfg.o_bias:
            return False
        h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        shapes = ((_GEMM_NORM, (cfg.num_heads + 2 * cfg.num_kv_heads) * d, h),
                  (_GEMM_RES, h, cfg.num_heads * d), (_GEMM_NORM_SILU, inter, h),
                  (_GEMM_RES, h, inter))  # fmt: skip
        key = (st.n_tok, *[v for sh in shapes for v in sh])
        if key not in self._fused_ok:
            wn, sp = ctypes.c_int(), ctypes.c_int()
            self._fused_ok[key] = all(
                self.lib.rl_gemm_config(st.n_tok, n, k, f, ctypes.byref(wn), ctypes.byref(sp))
                for f, n, k in shapes
            )
        return self._fused_ok[key]

    def norm_linear(
        self, x: paddle.Tensor, norm_w: paddle.Tensor, w: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        n, k, out_n = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
        out = self._empty([n, out_n], dtype_name(x))
        self._call("rl_gemm_norm", out.data_ptr(), x.data_ptr(), None, None, norm_w.data_ptr(),
                   eps, w.data_ptr(), n, out_n, k, None, None, self.stream)  # fmt: skip
        return out

    def norm_linear_silu(
        self, x: paddle.Tensor, norm_w: paddle.Tensor, gate_up: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        n, k, inter = int(x.shape[0]), int(x.shape[1]), int(gate_up.shape[0]) // 2
        out = self._empty([n, inter], dtype_name(x))
        self._call("rl_gemm_norm_silu", out.data_ptr(), x.data_ptr(), None, None,
                   norm_w.data_ptr(), eps, gate_up.data_ptr(), n, inter, k, None, None,
                   self.stream)  # fmt: skip
        return out

    def linear_residual(self, x: paddle.Tensor, a: paddle.Tensor, w: paddle.Tensor) -> None:
        n, k, out_n = int(a.shape[0]), int(a.shape[1]), int(w.shape[0])
        self._call("rl_gemm_residual", x.data_ptr(), a.data_ptr(), w.data_ptr(), n, out_n, k,
                   None, None, self.stream)  # fmt: skip

    # ---- folded norms (ops/base.py)
    def folds_norms(self, dtype: str) -> bool:
        """bf16 weights, when rl_gemm_acc can run (checked on the first bf16 build: float32
        models never open cuBLAS for it)."""
        if dtype != "bfloat16":
            return False
        if self._fold is None:
            self._fold = self._gemm_acc_ready()
        return self._fold

    def folded_layers(self, st: CudaStep, dtype: str) -> bool:
        """bf16 steps of more rows than the fused / streaming kernels take (a graph bucket
        boundary: a batch and its padded graph decide alike)."""
        return self.folds_norms(dtype) and st.n_tok >= self.folded_min_rows

    def qkv_rope_rms_linear(
        self, x: paddle.Tensor, w: paddle.Tensor, bias: paddle.Tensor | None, st: CudaStep,
        kc: paddle.Tensor, vc: paddle.Tensor, eps: float,
    ) -> paddle.Tensor:  # fmt: skip
        return self._qkv_rope(self.linear(x, w), None, bias, st, kc, vc, xn=x, eps=eps)

    def silu_rms_linear(
        self, x: paddle.Tensor, gate_up: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        gu = self.linear(x, gate_up)
        dt = dtype_name(gu)
        n, inter = int(gu.shape[0]), int(gu.shape[1]) // 2
        out = self._empty([n, inter], dt)
        self._call("rl_silu_mul_rms", out.data_ptr(), gu.data_ptr(), x.data_ptr(),
                   int(x.shape[1]), eps, n, inter, _CODE[dt], self.stream)  # fmt: skip
        return out

    def add_linear(self, x: paddle.Tensor, a: paddle.Tensor, w: paddle.Tensor) -> paddle.Tensor:
        """x += a @ w^T in place, on cuBLAS with beta = 1 (bf16; one rounding)."""
        m, k, n = int(a.shape[0]), int(a.shape[1]), int(w.shape[0])
        self._call("rl_gemm_acc", x.data_ptr(), a.data_ptr(), w.data_ptr(), m, n, k, self.stream)
        return x

    def silu_mul(self, gate_up: paddle.Tensor) -> paddle.Tensor:
        dt = dtype_name(gate_up)
        n, i2 = int(gate_up.shape[0]), int(gate_up.shape[1])
        out = self._empty([n, i2 // 2], dt)
        self._call("rl_silu_mul", out.data_ptr(), gate_up.data_ptr(), n, i2 // 2, _CODE[dt],
                   self.stream)  # fmt: skip
        return out

    def final_norm(
        self, x: paddle.Tensor, delta: paddle.Tensor | SplitKParts | None, w: paddle.Tensor,
        st: CudaStep, eps: float,
    ) -> paddle.Tensor:  # fmt: skip
        dt = dtype_name(x)
        h = int(x.shape[1])
        out = self._empty([st.n_sample, h], dt)
        self._norm(out, None, x.data_ptr(), delta, st.rows, w, st.n_sample, h, eps, dt)
        return out

    def logits(self, rows: paddle.Tensor, lm_head: paddle.Tensor) -> paddle.Tensor:
        """Logits [S, vocab] in the model's dtype, as the GEMM wrote them: the selection
        kernels read that dtype directly (a float32 copy would add nothing: the values are
        the same) and `logits_to_numpy` widens them for the host."""
        if LT_LOGITS and (y := self.lt.matmul(rows, lm_head, self.stream)) is not None:
            return y
        return paddle.matmul(rows, lm_head, transpose_y=True)

    def logits_to_numpy(self, logits: paddle.Tensor) -> np.ndarray:
        dt = dtype_name(logits)
        if dt == "float32":
            return logits.numpy()
        out = self._empty(list(logits.shape), "float32")
        self._call("rl_cast_f32", out.data_ptr(), logits.data_ptr(), int(np.prod(logits.shape)),
                   _CODE[dt], self.stream)  # fmt: skip
        return out.numpy()

    def _select_space(self, rows: int, vocab: int) -> tuple[paddle.Tensor | None, int | None, int]:
        """(partials, counters, chunks a row) for the selection kernels: each row is split
        over enough blocks to fill the GPU SELECT_FILL times (one block when rows alone do)."""
        fill = SELECT_FILL * self.num_sms
        nchunk = max(1, min(64, -(-fill // max(rows, 1)), vocab // 2048))
        if nchunk == 1 or rows > SELECT_COUNTERS:
            return None, None, 1
        part = self._empty([rows * nchunk * self._select_part_bytes], "uint8")
        return part, self.counters.data_ptr() + 4 * ATTN_COUNTERS, nchunk

    def argmax(self, logits: paddle.Tensor) -> paddle.Tensor:
        """int64 [rows] on the device (no sync: usable inside a CUDA graph capture)."""
        rows, vocab = int(logits.shape[0]), int(logits.shape[1])
        out = self._empty([rows], "int64")
        part, counters, nchunk = self._select_space(rows, vocab)
        self._call("rl_argmax", out.data_ptr(), logits.data_ptr(), rows, vocab,
                   _CODE[dtype_name(logits)], part.data_ptr() if part is not None else None,
                   counters, nchunk, self.stream)  # fmt: skip
        return out

    def greedy(self, logits: paddle.Tensor) -> list[int]:
        return [int(t) for t in self.argmax(logits).numpy()]

    def sample_rows(
        self, logits: paddle.Tensor, params_addr: int, info: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """int64 [rows] drawn on the device: logits [rows, vocab] (float32 or the model's
        dtype), parameters int64 [rows, 5] at device address `params_addr`
        (sampler.device_rows); `info` int64 [rows, 4] gets each row's kept set (checks).
        Greedy and plain-temperature rows are drawn by `select_k` (each row split over
        several blocks), rows with a top-k / top-p cut by `sample_k`. No sync:
        graph-capturable."""
        rows, vocab = int(logits.shape[0]), int(logits.shape[1])
        out = self._empty([rows], "int64")
        part, counters, nchunk = self._select_space(rows, vocab)
        self._call("rl_sample", out.data_ptr(), info.data_ptr() if info is not None else None,
                   logits.data_ptr(), params_addr, rows, vocab, _CODE[dtype_name(logits)],
                   part.data_ptr() if part is not None else None, counters, nchunk,
                   self.stream)  # fmt: skip
        return out

    def logits_and_ids(
        self, rows: paddle.Tensor, lm_head: paddle.Tensor, st: CudaStep, need_logits: bool = True
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """bf16 steps of at most `head_select_rows` sampled rows: one rl_head_select launch
        (the LM head's GEMM with each row's selection inside; the logits written only when
        `need_logits` or a row has a top-k / top-p cut); others: logits + `sample_ids`."""
        m, k, v = int(rows.shape[0]), int(rows.shape[1]), int(lm_head.shape[0])
        nbytes = 0
        if dtype_name(rows) == "bfloat16" and 0 < m <= self.head_select_rows:
            if (m, v, k) not in self._head_part:
                self._head_part[(m, v, k)] = int(self.lib.rl_head_select_part_bytes(m, v, k))
            nbytes = self._head_part[(m, v, k)]
        if not nbytes:
            return super().logits_and_ids(rows, lm_head, st, need_logits)
        logits = self._empty([m, v], "bfloat16")
        out = self._empty([m], "int64")
        part = self._empty([nbytes], "uint8")
        counter = self.counters.data_ptr() + 4 * (ATTN_COUNTERS + SELECT_COUNTERS)
        self._call("rl_head_select", out.data_ptr(), None, logits.data_ptr(), rows.data_ptr(),
                   lm_head.data_ptr(), st.samp, m, v, k, int(need_logits), part.data_ptr(),
                   counter, self.stream)  # fmt: skip
        return logits, out

    def sample_ids(self, logits: paddle.Tensor, st: CudaStep) -> paddle.Tensor:
        """The step's sampled token ids, int64 [S] on the device (greedy rows: argmax)."""
        return self.sample_rows(logits, st.samp)

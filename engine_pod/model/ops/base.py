"""The seam between the decoder's math (`llama.PagedDecoder`) and the kernels that run it.

The decoder calls only these operations; GEMMs go through `linear` (always `paddle.matmul`,
i.e. cuBLAS on a GPU). Two implementations:

- `NativeOps` (ops/native.py): Paddle's own operators: the CPU path, and GPUs where
  Paddle's own build has kernels for the chip (Paddle's CUDA 12.6+ packages on Hopper).
- `CudaOps` (ops/cuda.py): our CUDA kernels (ops/kernels.cu), launched on the device
  pointers of Paddle tensors on Paddle's stream; needed where Paddle's GPU kernels are
  missing for the chip (PyPI's paddlepaddle-gpu 2.6.2 on an H100: only matmul and copies
  are right there).

Tensors are Paddle tensors; shapes below use T = tokens in the step, S = sampled rows,
h = hidden size, d = head dim, hq / hkv = query / kv heads, I = intermediate size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import paddle

from engine_pod.model.hf_config import ModelConfig
from engine_pod.model.step_plan import StepPlan


class DecoderOps(ABC):
    """The non-GEMM operations of one decoder step (plus weight upload and the GEMM call)."""

    name: str = "abstract"
    device_greedy: bool = False  # True: `greedy` runs on the device (only ids come back)
    device_sampling: bool = False  # True: `sample_ids` draws every row on the device
    needs_context_slots: bool = True  # False: the step plan's per-position slots are unused

    @abstractmethod
    def to_device(self, a: np.ndarray, dtype: str) -> paddle.Tensor:
        """A new tensor on the current device from a float numpy array, cast to `dtype`."""

    @abstractmethod
    def zeros(self, shape: list[int], dtype: str) -> paddle.Tensor: ...

    @abstractmethod
    def begin_step(self, cfg: ModelConfig, plan: StepPlan, rope: Any, block_size: int) -> Any:
        """Upload the step's indices (token ids, positions, cache slots, block tables...)."""

    @abstractmethod
    def embed(self, table: paddle.Tensor, st: Any) -> paddle.Tensor:
        """Embedding gather: [T, h] rows of `table` for the step's token ids."""

    @abstractmethod
    def rms_norm(self, x: paddle.Tensor, w: paddle.Tensor, eps: float) -> paddle.Tensor: ...

    @abstractmethod
    def add_rms_norm(
        self, x: paddle.Tensor, delta: Any, w: paddle.Tensor, eps: float
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Fused residual add + RMSNorm: (x + delta, rms_norm(x + delta) * w); `delta` a
        tensor or what `linear_deferred` returned."""

    @abstractmethod
    def linear(
        self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """x @ w.T (+ b); w in HF [out, in] layout."""

    def linear_deferred(
        self, x: paddle.Tensor, w: paddle.Tensor, b: paddle.Tensor | None = None
    ) -> Any:
        """`linear`, whose result may be handed over unfinished (e.g. a GEMM's split-K
        partial sums) when it is only ever passed as `delta` to `add_rms_norm` / `final_norm`,
        which finish it: the same values, one kernel's work fewer."""
        return self.linear(x, w, b)

    def qkv_rope_linear(
        self, h: paddle.Tensor, w: paddle.Tensor, bias: paddle.Tensor | None, st: Any,
        kc: paddle.Tensor, vc: paddle.Tensor,
    ) -> paddle.Tensor:  # fmt: skip
        """`qkv_rope_cache(linear(h, w), ...)`: the qkv projection, bias, RoPE and the KV
        write (ops may do it in fewer launches, with the same results)."""
        return self.qkv_rope_cache(self.linear(h, w), bias, st, kc, vc)

    @abstractmethod
    def qkv_rope_cache(
        self,
        qkv: paddle.Tensor,
        bias: paddle.Tensor | None,
        st: Any,
        kc: paddle.Tensor,
        vc: paddle.Tensor,
    ) -> paddle.Tensor:
        """(+ bias), split q/k/v, RoPE on q and k, write k/v to their cache slots; q [T, hq, d]."""

    @abstractmethod
    def attention(
        self, q: paddle.Tensor, kc: paddle.Tensor, vc: paddle.Tensor, st: Any
    ) -> paddle.Tensor:
        """Causal GQA of each token over its sequence's paged context: [T, hq * d]."""

    @abstractmethod
    def silu_mul(self, gate_up: paddle.Tensor) -> paddle.Tensor:
        """[T, 2I] (gate then up) → silu(gate) * up [T, I]."""

    def linear_silu(self, x: paddle.Tensor, gate_up: paddle.Tensor) -> paddle.Tensor:
        """silu_mul(x @ gate_up^T): the MLP's gate_up projection and SiLU * mul, [T, I] (a
        kernel library may run both in one kernel, with the same roundings)."""
        return self.silu_mul(self.linear(x, gate_up))

    @abstractmethod
    def final_norm(
        self, x: paddle.Tensor, delta: Any, w: paddle.Tensor, st: Any, eps: float
    ) -> paddle.Tensor:
        """rms_norm((x + delta)[sample rows]) * w: [S, h] (`delta` as for add_rms_norm)."""

    @abstractmethod
    def logits(self, rows: paddle.Tensor, lm_head: paddle.Tensor) -> paddle.Tensor:
        """Logits [S, vocab] on the device (float32, or the model's dtype where the kernels
        that read them take it; `logits_to_numpy` gives float32)."""

    def logits_to_numpy(self, logits: paddle.Tensor) -> np.ndarray:
        return logits.numpy()

    def sample_ids(self, logits: paddle.Tensor, st: Any) -> paddle.Tensor:
        """int64 [S] token ids drawn on the device with each row's sampling parameters."""
        raise NotImplementedError(f"{self.name} ops do not sample on the device")

    def logits_and_ids(
        self, rows: paddle.Tensor, lm_head: paddle.Tensor, st: Any, need_logits: bool = True
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """The step's logits [S, vocab] (`logits`) and its token ids drawn on the device
        (`sample_ids`) from the final hidden rows [S, h]. With `need_logits` False a kernel
        library may draw straight from the hidden rows and leave the logits unwritten."""
        logits = self.logits(rows, lm_head)
        return logits, self.sample_ids(logits, st)

    # ---- fused layer ops (optional): GEMMs with the norm / SiLU / residual around them in
    # one kernel. `fused_layers` says whether a step uses them; the decoder then calls the
    # three below instead of add_rms_norm / linear / silu_mul (same math and roundings).
    def fused_layers(self, st: Any, dtype: str) -> bool:
        """True: this step's layers (compute `dtype`) run on the three fused ops below."""
        return False

    def norm_linear(
        self, x: paddle.Tensor, norm_w: paddle.Tensor, w: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        """rms_norm(x) * norm_w @ w^T: [T, out]."""
        raise NotImplementedError(f"{self.name} ops do not fuse layers")

    def norm_linear_silu(
        self, x: paddle.Tensor, norm_w: paddle.Tensor, gate_up: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        """silu_mul(rms_norm(x) * norm_w @ gate_up^T): [T, I]."""
        raise NotImplementedError(f"{self.name} ops do not fuse layers")

    def linear_residual(self, x: paddle.Tensor, a: paddle.Tensor, w: paddle.Tensor) -> None:
        """x += a @ w^T, in place (x is the residual stream)."""
        raise NotImplementedError(f"{self.name} ops do not fuse layers")

    # ---- folded norms (optional). At weight load (`llama.build_weights`) each layer's two
    # RMSNorm weights are folded into the GEMM after them (qkv and gate_up columns scaled by
    # them, the norm weights set to 1): rms_norm(x) * n @ W^T = (x @ (W diag n)^T) / rms(x).
    # `folded_layers` steps then run their layers on the raw residual stream x: the kernel
    # that reads each of those two products scales it by 1 / rms of its row, and the o / down
    # products are added into x by their GEMM — no norm launches between the layer's GEMMs.
    # Other steps run as usual (their norms, now of unit weight, give the same math).
    fold_norms: bool = False

    def folds_norms(self, dtype: str) -> bool:
        """True: weights built for compute `dtype` get their layer norms folded in."""
        return self.fold_norms

    def folded_layers(self, st: Any, dtype: str) -> bool:
        """True: this step's layers run on the three folded-norm ops below."""
        return self.folds_norms(dtype)

    def _unit_norm(self, x: paddle.Tensor) -> paddle.Tensor:
        """A norm weight of ones for rows like x's (made once per width and dtype)."""
        key = (int(x.shape[1]), _dtype_str(x))
        units = self.__dict__.setdefault("_unit_norms", {})
        if key not in units:
            units[key] = self.to_device(np.ones(key[0], np.float32), key[1])
        return units[key]

    def qkv_rope_rms_linear(
        self, x: paddle.Tensor, w: paddle.Tensor, bias: paddle.Tensor | None, st: Any,
        kc: paddle.Tensor, vc: paddle.Tensor, eps: float,
    ) -> paddle.Tensor:  # fmt: skip
        """`qkv_rope_linear(rms_norm(x) (unit weight), w, ...)` with the input norm's weight
        folded into w: q [T, hq, d], K / V written."""
        return self.qkv_rope_linear(self.rms_norm(x, self._unit_norm(x), eps), w, bias, st, kc, vc)

    def silu_rms_linear(
        self, x: paddle.Tensor, gate_up: paddle.Tensor, eps: float
    ) -> paddle.Tensor:
        """`linear_silu(rms_norm(x) (unit weight), gate_up)` with the post-attention norm's
        weight folded into gate_up: [T, I]."""
        return self.linear_silu(self.rms_norm(x, self._unit_norm(x), eps), gate_up)

    def add_linear(self, x: paddle.Tensor, a: paddle.Tensor, w: paddle.Tensor) -> paddle.Tensor:
        """x + a @ w^T: the residual stream after a projection (a kernel library may add it in
        place and return x)."""
        return x + self.linear(a, w)

    def greedy(self, logits: paddle.Tensor) -> list[int]:
        """argmax of each row (first index among ties)."""
        return [int(t) for t in np.argmax(self.logits_to_numpy(logits), axis=-1)]


def _dtype_str(t: paddle.Tensor) -> str:
    """The dtype name of a Paddle tensor: "float32", "bfloat16", ..."""
    return str(t.dtype).replace("paddle.", "")

"""The decoder's op seam (engine_pod.model.ops) on a machine without a GPU."""

from __future__ import annotations

import importlib

import pytest

from engine_pod.model.ops import NativeOps, get_ops, ops_kind


def test_cpu_gets_native_ops() -> None:
    assert isinstance(get_ops("cpu"), NativeOps)
    assert ops_kind("cpu") == "native"
    assert ops_kind("gpu") == "cuda" and ops_kind("gpu:1") == "cuda"


def test_ops_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLFLEET_OPS", "native")
    assert ops_kind("gpu") == "native"
    monkeypatch.setenv("RLFLEET_OPS", "bogus")
    with pytest.raises(ValueError):
        ops_kind("gpu")


def test_cuda_ops_module_imports_without_gpu() -> None:
    """The kernel path imports cleanly anywhere; only CudaOps() loads the library."""
    mod = importlib.import_module("engine_pod.model.ops.cuda")
    assert set(mod._SIGNATURES) >= {"rl_paged_attention", "rl_qkv_rope_cache", "rl_rms_norm",
                                     "rl_gather_rows", "rl_silu_mul", "rl_argmax"}  # fmt: skip
    from engine_pod.model.ops import build

    cmd = build.nvcc_command("/tmp/x.so")
    assert "-gencode=arch=compute_90,code=sm_90" in cmd and cmd[-1].endswith("kernels.cu")


def test_pack_step_layout() -> None:
    """Every index array of a step, packed as the kernels read them."""
    import numpy as np

    from engine_pod.model.base import SeqWork
    from engine_pod.model.ops.cuda import CudaOps
    from engine_pod.model.step_plan import plan_step

    batch = [SeqWork("a", [5, 6, 7], 0, [3], True), SeqWork("b", [9], 20, [1, 4], True)]
    plan = plan_step(batch, 16, 8, 300, 2048)
    buf, offs, stride = CudaOps.pack_step(plan, 16)
    t = 4
    assert stride == 2 and offs == [0, t, 2 * t, 3 * t, 4 * t, 5 * t, 5 * t + 2]
    assert buf[:t].tolist() == [9, 5, 6, 7]  # decode first
    assert buf[t : 2 * t].tolist() == [20, 0, 1, 2]
    assert buf[2 * t : 3 * t].tolist() == [4, 3, 3, 3]
    assert buf[3 * t : 4 * t].tolist() == [4, 0, 1, 2]
    assert buf[4 * t : 5 * t].tolist() == [0, 1, 1, 1]
    assert buf[5 * t : 5 * t + 2].tolist() == [0, 3]
    assert np.array_equal(buf[5 * t + 2 :].reshape(2, 2), [[1, 4], [3, 0]])

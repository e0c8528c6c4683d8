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
    assert stride == 8  # the stride bucket (next power of two, at least 8 blocks)
    assert offs == [0, t, 2 * t, 3 * t, 4 * t, 5 * t, 5 * t + 2, 5 * t + 12]
    assert buf[:t].tolist() == [9, 5, 6, 7]  # decode first
    assert buf[t : 2 * t].tolist() == [20, 0, 1, 2]
    assert buf[2 * t : 3 * t].tolist() == [4, 3, 3, 3]
    assert buf[3 * t : 4 * t].tolist() == [4, 0, 1, 2]
    assert buf[4 * t : 5 * t].tolist() == [0, 1, 1, 1]
    assert buf[5 * t : 5 * t + 2].tolist() == [0, 3]
    samp = buf[5 * t + 2 : 5 * t + 12].reshape(2, 5)  # sampler.device_rows
    assert samp[:, :2].view(np.float64).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert samp[:, 2].tolist() == [-1, -1] and samp[:, 4].tolist() == [0, 0]
    tables = np.zeros((2, 8), dtype=np.int64)
    tables[0, :2], tables[1, 0] = [1, 4], 3
    assert np.array_equal(buf[5 * t + 12 :].reshape(2, 8), tables)


def test_pack_step_pads_decode_steps_for_graphs() -> None:
    """A decode step padded to a graph bucket: greedy rows at position 0 of the pad block."""
    import numpy as np

    from engine_pod.model.base import SamplingParams, SeqWork
    from engine_pod.model.ops.cuda import CudaOps
    from engine_pod.model.step_plan import plan_step

    sp = SamplingParams(temperature=0.5, top_k=7, top_p=0.8, seed=3)
    batch = [SeqWork("a", [5], 9, [3, 1, 4], True, sp, 2), SeqWork("b", [7], 2, [6], True)]
    plan = plan_step(batch, 4, 10, 300, 2048, context_slots=False)
    buf, offs, stride = CudaOps.pack_step(plan, 4, stride=8, pad_to=4, pad_block=10)
    assert stride == 8 and offs == [0, 4, 8, 12, 16, 20, 24, 44] and buf.size == 44 + 32
    assert buf[0:4].tolist() == [5, 7, 0, 0] and buf[4:8].tolist() == [9, 2, 0, 0]
    assert buf[8:12].tolist() == [4, 6, 10, 10] and buf[12:16].tolist() == [1, 2, 0, 0]
    assert buf[16:20].tolist() == [0, 1, 2, 3] and buf[20:24].tolist() == [0, 1, 2, 3]
    samp = buf[24:44].reshape(4, 5)
    assert samp[0].tolist()[2:] == [7, 3, 2]
    assert samp[0, :2].view(np.float64).tolist() == [0.5, 0.8]
    assert samp[2:, :2].view(np.float64).tolist() == [[0.0, 1.0], [0.0, 1.0]]  # greedy pads
    tables = buf[44:].reshape(4, 8)
    assert tables[0].tolist() == [3, 1, 4] + [10] * 5 and tables[1].tolist() == [6] + [10] * 7
    assert (tables[2:] == 10).all()
    with pytest.raises(ValueError):  # prefill steps are never padded
        pre = plan_step([SeqWork("c", [1, 2], 0, [0], True)], 4, 10, 300, 2048)
        CudaOps.pack_step(pre, 4, pad_to=2)

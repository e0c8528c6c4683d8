"""CUDA-graph decode steps and device sampling: the parts that run without a GPU.

The graphs themselves, the sampling kernel and their results are checked on the GPU
(tests/engine/test_gpu_ops.py, bench/gpu/graph_check.py, bench/gpu/sample_check.py);
here: bucketing, which steps a graph takes, the sampler's parameter rows, and that the
CPU path keeps neither graphs nor device sampling.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine_pod.config import config_from_args
from engine_pod.model.base import SamplingParams, SeqWork
from engine_pod.model.sampler import device_rows
from engine_pod.model.step_plan import plan_step


def test_batch_and_stride_buckets() -> None:
    from engine_pod.model.cuda_graphs import batch_buckets
    from engine_pod.model.ops.cuda import stride_bucket

    assert batch_buckets(128) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    assert batch_buckets(100)[-2:] == [96, 100] and batch_buckets(1) == [1]
    assert [stride_bucket(n) for n in (1, 8, 9, 16, 17, 34, 64, 65)] == [
        8, 8, 16, 16, 32, 64, 64, 128
    ]  # fmt: skip


def _pack(batch: list[SeqWork], max_batch: int = 8):
    from engine_pod.model.cuda_graphs import batch_buckets, pack_decode

    return pack_decode(batch, 4, 64, 100, 256, batch_buckets(max_batch))


def test_pack_decode_equals_the_planned_layout() -> None:
    """The graph's direct packer = plan_step + CudaOps.pack_step padded to the bucket."""
    from engine_pod.model.ops.cuda import CudaOps

    sp = SamplingParams(temperature=0.6, top_k=9, top_p=0.7, seed=12)
    batch = [SeqWork(f"r{i}", [7 + i], 4 * i + 3, list(range(10 * i, 10 * i + 9)), True, sp, i)
             for i in range(5)]  # fmt: skip
    buf, key = _pack(batch)
    assert key == (8, 8)  # 5 rows → bucket 8; 5 blocks → stride 8
    plan = plan_step(batch, 4, 65, 100, 256, context_slots=False)
    want, _, _ = CudaOps.pack_step(plan, 4, stride=8, pad_to=8, pad_block=64)
    assert buf.tolist() == want.tolist()
    long = [SeqWork("x", [1], 40, list(range(11)), True)]
    assert _pack(long)[1] == (1, 16)
    # tables that cover exactly the positions written (as the scheduler hands them)
    exact = [SeqWork(f"e{i}", [3 + i], 5 * i + 2, list(range(20 + 7 * i, 20 + 7 * i + (5 * i + 2) // 4 + 1)),
                     True, SamplingParams(temperature=0.0)) for i in range(3)]  # fmt: skip
    buf, key = _pack(exact)
    plan = plan_step(exact, 4, 65, 100, 256, context_slots=False)
    want, _, _ = CudaOps.pack_step(plan, 4, stride=key[1], pad_to=key[0], pad_block=64)
    assert key == (4, 8) and buf.tolist() == want.tolist()


def test_pack_decode_declines_what_is_not_a_graph_step() -> None:
    ok = [SeqWork("a", [1], 5, [3, 4], True)]
    assert _pack(ok) is not None
    assert _pack([SeqWork("p", [1, 2, 3], 0, [9], True)]) is None  # a prefill chunk
    assert _pack([SeqWork("u", [1], 0, [0], False)]) is None  # not sampled
    assert _pack([SeqWork(f"m{i}", [1], 0, [i], True) for i in range(9)]) is None  # > bucket
    assert _pack([]) is None
    bad = [
        SeqWork("v", [100], 0, [0], True),  # token id outside the vocabulary
        SeqWork("p", [1], 256, [0] * 65, True),  # position past max_len
        SeqWork("t", [1], 8, [0, 1], True),  # block table too short
        SeqWork("b", [1], 0, [64], True),  # the scratch block
        SeqWork("n", [1], 0, [-1], True),  # negative block
        SeqWork("o", [1], 0, [65], True),  # out of range
    ]
    for w in bad:
        assert _pack([w]) is None, w
    assert _pack([ok[0], ok[0]]) is None  # a request twice


def test_pack_decode_feed_leaves_the_ids_to_the_device() -> None:
    """A look-ahead step's rows carry FEED_TOKEN: packed as 0 (the runner copies the last
    step's sampled ids over them on the device), everything else as for known tokens; a
    feed step with a real token, or a FEED_TOKEN without feed, is refused."""
    from engine_pod.model.base import FEED_TOKEN
    from engine_pod.model.cuda_graphs import batch_buckets, pack_decode

    def pack(batch, feed):
        return pack_decode(batch, 4, 64, 100, 256, batch_buckets(8), feed)

    sp = SamplingParams(temperature=0.5, seed=3)
    rows = [SeqWork(f"f{i}", [FEED_TOKEN], 5 + i, [2 * i, 2 * i + 1], True, sp, 4)
            for i in range(3)]  # fmt: skip
    fed, key = pack(rows, True)
    known, key2 = pack([SeqWork(w.request_id, [0], w.start_pos, w.block_table, True, sp, 4)
                        for w in rows], False)  # fmt: skip
    assert key == key2 and fed.tolist() == known.tolist()
    assert pack(rows, False) is None
    assert pack([SeqWork("k", [5], 6, [0, 1], True)], True) is None


def test_device_rows_layout() -> None:
    rows = device_rows(
        [
            SamplingParams(temperature=0.0),
            SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=2**64 - 1),
            SamplingParams(temperature=1.0, top_k=1, seed=5),  # top_k 1 is greedy
            SamplingParams(temperature=1.2),
        ],
        [4, 5, 6, 7],
    )
    assert rows.shape == (4, 5) and rows.dtype == np.int64
    f = rows[:, :2].view(np.float64)
    assert f.tolist() == [[0.0, 1.0], [0.7, 0.9], [0.0, 1.0], [1.2, 1.0]]
    assert rows[0, 2:].tolist() == [-1, 0, 0] and rows[2, 2:].tolist() == [-1, 0, 0]
    assert rows[1, 2:].tolist() == [40, -1, 5]  # seed as uint64 bits, counter = num_generated
    assert rows[3, 2] == -1 and rows[3, 4] == 7
    again = device_rows([SamplingParams(temperature=1.2)], [7])
    assert again[0, 3] != rows[3, 3]  # unseeded: a fresh seed each step
    seeded = device_rows(
        [SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=2**64 - 1)], [5]
    )
    assert seeded.tolist() == rows[1:2].tolist()  # seeded: the same row every time
    assert device_rows([], []).shape == (0, 5)


def test_cuda_graph_flags() -> None:
    assert config_from_args([]).cuda_graphs is None  # default: on with the CUDA kernels
    c = config_from_args(["--device", "gpu", "--no-cuda-graphs", "--cuda-graph-max-batch", "64"])
    assert c.cuda_graphs is False and c.cuda_graph_max_batch == 64
    assert config_from_args(["--cuda-graphs"]).cuda_graphs is True
    with pytest.raises(SystemExit):
        config_from_args(["--cuda-graph-max-batch", "0"])


def test_cpu_runner_has_no_graphs_and_samples_on_the_host() -> None:
    from engine_pod.model.paddle_runner import PaddleModelRunner

    r = PaddleModelRunner(device="cpu", cuda_graphs=True)  # asked for, but no CUDA kernels
    assert r.graphs is None and not r.device_sampling
    r.allocate_kv_cache(16, 4)
    assert r.num_blocks == 16 and r.cache is not None and r.cache.num_blocks == 16
    sp = SamplingParams(temperature=0.9, top_p=0.8, seed=3)
    out1 = r.execute([SeqWork("a", [1, 2, 3], 0, [0], True, sp, 0)])
    r.allocate_kv_cache(16, 4)
    out2 = r.execute([SeqWork("a", [1, 2, 3], 0, [5], True, sp, 0)])
    assert out1 == out2  # seeded host sampling, as before


def test_shape_rules_change_only_at_graph_buckets() -> None:
    """A batch of n rows and the graph bucket it is padded to must pick the same attention
    split length and the same GEMM path, or eager steps and graph replays would round
    differently (the same request could get other tokens from a replay than eagerly)."""
    from engine_pod.model.cuda_graphs import batch_buckets
    from engine_pod.model.ops.cuda import (
        ATTN_DEEP_ROWS,
        FUSED_GEMM_ROWS,
        GATE_UP_SILU_ROWS,
        HEAD_SELECT_ROWS,
        LT_GEMM_ROWS,
        STREAM_GEMM_ROWS,
        deep_split,
        keys_per_split,
    )

    buckets = batch_buckets(128)
    for n in range(1, 129):
        b = next(x for x in buckets if x >= n)
        for version in ("v2", "v3", "v4", "v5"):
            assert keys_per_split(version, n) == keys_per_split(version, b), (version, n, b)
        assert deep_split(n) == deep_split(b), (n, b)
        # the fused GEMMs', the streaming GEMMs', deep attention splits' and the fused LM
        # head's row limits
        # (defaults and the tuned 64), and the streaming kernel's 32- / 64-row blocks
        limits = {
            FUSED_GEMM_ROWS,
            STREAM_GEMM_ROWS,
            GATE_UP_SILU_ROWS,
            ATTN_DEEP_ROWS,
            LT_GEMM_ROWS,
            HEAD_SELECT_ROWS,
        }
        for limit in limits | {32, 64}:
            assert (n <= limit) == (b <= limit), (limit, n, b)
    assert keys_per_split("v5", 1) < keys_per_split("v5", 128)  # longer splits for big batches


def test_lt_pick_keeps_the_heuristics_choice_unless_another_is_clearly_faster() -> None:
    """cuBLASLt's measured algorithm choice (ops/lt_gemm.py; the GPU run: kernel_check's
    lt_gemm checks): the fastest, but the heuristic's first (index 0, what cuBLAS runs) stays
    when within the margin; declined algorithms (-1) never win."""
    from engine_pod.model.ops.lt_gemm import MARGIN, pick

    assert pick([5.0, 4.0, 4.5]) == 1
    assert pick([4.0 * (1 + MARGIN / 2), 4.0]) == 0
    assert pick([-1.0, 4.0, 3.0]) == 2
    assert pick([3.0, -1.0]) == 0
    assert pick([-1.0, -1.0]) == -1

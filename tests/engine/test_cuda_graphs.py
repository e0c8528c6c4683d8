"""CUDA-graph decode steps and device sampling: the parts that run without a GPU.

The graphs themselves, the sampling kernel and their results are checked on the GPU
(tests/engine/test_gpu_ops.py, bench/gpu/graph_check.py, bench/gpu/sample_check.py);
here: bucketing, which steps a graph takes, the sampler's parameter rows, and that the
CPU path keeps neither graphs nor device sampling.
"""

from __future__ import annotations

from types import SimpleNamespace

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


def _graphs(max_batch: int = 8):
    from engine_pod.model.cuda_graphs import DecodeGraphs

    g = DecodeGraphs(ops=None, decoder=None, max_batch=max_batch)  # type: ignore[arg-type]
    g.cache = SimpleNamespace(block_size=4, num_blocks=65)
    g.scratch = 64
    return g


def test_graphs_take_decode_steps_only() -> None:
    g = _graphs(max_batch=8)
    decode = [SeqWork(f"r{i}", [1], 4 * i + 3, list(range(i + 1)), True) for i in range(5)]
    plan = plan_step(decode, 4, 64, 100, 256, context_slots=False)
    assert g.fits(plan) and g.key(plan) == (8, 8)  # 5 rows → bucket 8; 5 blocks → stride 8
    long = [SeqWork("x", [1], 40, list(range(11)), True)]
    assert g.key(plan_step(long, 4, 64, 100, 256)) == (1, 16)
    mixed = [*decode[:2], SeqWork("p", [1, 2, 3], 0, [9], True)]
    assert not g.fits(plan_step(mixed, 4, 64, 100, 256))  # a prefill chunk: eager
    unsampled = [SeqWork("u", [1], 0, [0], False)]
    assert not g.fits(plan_step(unsampled, 4, 64, 100, 256))
    many = [SeqWork(f"m{i}", [1], 0, [i], True) for i in range(9)]
    assert not g.fits(plan_step(many, 4, 64, 100, 256))  # over the largest bucket
    g.cache = None
    assert not g.fits(plan)  # no KV cache attached yet


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

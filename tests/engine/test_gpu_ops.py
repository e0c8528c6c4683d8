"""The CUDA kernel path (engine_pod.model.ops.cuda) on a GPU: kernels against the CPU
path, and greedy decoding of the tiny model against the numpy reference.

Skipped on machines without a CUDA GPU (CI); run on the GPU machine by
bench/gpu/device_run.sh (stage `pytest`). GPU-only modules are imported inside the tests.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

paddle = pytest.importorskip("paddle")


def _gpu_reason() -> str | None:
    if not paddle.device.is_compiled_with_cuda():
        return "Paddle is a CPU build (no CUDA)"
    try:
        if paddle.device.cuda.device_count() < 1:
            return "no CUDA GPU visible"
    except Exception as e:
        return f"no CUDA GPU usable: {e}"
    from engine_pod.model.ops import build

    if not os.path.exists(build.lib_path()) and not shutil.which("nvcc"):
        return "kernel library not built and nvcc not found"
    return None


REASON = _gpu_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU: {REASON}")

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "gpu")


@pytest.fixture(scope="module")
def gpu_ops():
    sys.path.insert(0, BENCH)
    paddle.set_device("gpu")
    try:
        paddle.base.core.set_cublas_switch(False)  # float32 GEMMs without TF32, as on the CPU
    except AttributeError:
        pass
    from engine_pod.model.ops.cuda import CudaOps

    yield CudaOps()
    paddle.set_device("cpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(64, 4, 2, 16, 128), (896, 14, 2, 64, 4864), (48, 4, 1, 16, 96)])
def test_kernels_match_cpu_path(gpu_ops, shape, dtype) -> None:
    import kernel_check

    ck = kernel_check.Checker(gpu_ops)
    kernel_check.check_shape(ck, *shape, dtype=dtype, seed=sum(shape))
    bad = [r for r in ck.results if not r["ok"]]
    assert not bad, bad


def test_tiny_greedy_equals_reference(gpu_ops, tmp_path) -> None:
    from greedy_check import run_paged

    from engine_pod.model.loader import load_checkpoint
    from engine_pod.model.paddle_runner import PaddleModelRunner
    from engine_pod.model.reference import reference_greedy
    from engine_pod.model.tiny import ensure_tiny_model

    tiny = ensure_tiny_model(str(tmp_path / "tiny"), seed=0)
    runner = PaddleModelRunner(tiny, device="gpu")
    assert runner.ops.name == "cuda"
    prompts = [runner.tokenizer.encode(t) for t in ["Hello", "The quick brown fox", "a"]]
    weights = load_checkpoint(tiny)
    expected = [reference_greedy(weights, p, 24) for p in prompts]
    assert run_paged(runner, prompts, 24, chunk=3, stagger=2) == expected
    assert run_paged(runner, prompts, 24, block_size=16, rng_seed=1) == expected


def test_device_sampler_matches_cpu_semantics(gpu_ops) -> None:
    """temperature / top-k / top-p masks exact, the distribution right, seeded = reproducible."""
    import sample_check

    res = sample_check.run_checks(gpu_ops, timing=False)
    assert res["ok"], {k: v for k, v in res.items() if k != "determinism"}


def test_graph_runner_greedy_and_weight_update(gpu_ops, tmp_path) -> None:
    """Decode steps replayed from CUDA graphs give the reference tokens, before and after a
    weight update that copies into the graphs' buffers (no recapture)."""
    from greedy_check import run_paged

    from engine_pod.model.loader import load_checkpoint
    from engine_pod.model.paddle_runner import PaddleModelRunner
    from engine_pod.model.reference import reference_greedy
    from engine_pod.model.tiny import ensure_tiny_model

    tiny0 = ensure_tiny_model(str(tmp_path / "tiny0"), seed=0)
    tiny1 = ensure_tiny_model(str(tmp_path / "tiny1"), seed=1)
    runner = PaddleModelRunner(tiny0, device="gpu")
    assert runner.graphs is not None
    prompts = [runner.tokenizer.encode(t) for t in ["Hello", "The quick brown fox", "a", "xyz!"]]
    want0 = [reference_greedy(load_checkpoint(tiny0), p, 16) for p in prompts]
    want1 = [reference_greedy(load_checkpoint(tiny1), p, 16) for p in prompts]
    assert run_paged(runner, prompts, 16, block_size=16, chunk=4, stagger=1) == want0
    assert runner.graphs.replays > 0
    captures = runner.graphs.captures
    runner.allocate_kv_cache = lambda num_blocks, block_size: None  # keep cache and graphs
    runner.swap_weights(runner.prepare_weights(tiny1))
    assert run_paged(runner, prompts, 16, block_size=16, chunk=4, stagger=1) == want1
    assert runner.graphs.captures == captures


def test_engine_lookahead_on_graphs_equals_reference(gpu_ops, tmp_path) -> None:
    """The engine core with look-ahead steps over the graph runner (inputs fed on the
    device, ids back through pinned memory): greedy tokens = the reference; seeded sampling
    = the same engine without look-ahead; look-ahead steps did run."""
    import threading
    import time

    from engine_pod.config import EngineConfig
    from engine_pod.engine.core import EngineCore
    from engine_pod.engine.request import Request
    from engine_pod.model.base import SamplingParams
    from engine_pod.model.loader import load_checkpoint
    from engine_pod.model.paddle_runner import PaddleModelRunner
    from engine_pod.model.reference import reference_greedy
    from engine_pod.model.tiny import ensure_tiny_model

    tiny = ensure_tiny_model(str(tmp_path / "tiny"), seed=0)
    runner = PaddleModelRunner(tiny, device="gpu")
    texts = ["Hello", "The quick brown fox", "a", "xyz!", "Paged attention"]
    prompts = [runner.tokenizer.encode(t) for t in texts]

    def engine(lookahead: bool, sp: SamplingParams) -> tuple[list[list[int]], int]:
        cfg = EngineConfig(max_num_seqs=8, num_kv_blocks=64, lookahead=lookahead)
        core = EngineCore(cfg, runner, lambda msg: None)
        threading.Thread(target=core.run_loop, daemon=True).start()
        reqs = [Request(f"r{i}", p, sp) for i, p in enumerate(prompts)]
        for r in reqs:
            core.add_request(r)
        end = time.monotonic() + 120
        while not all(r.is_finished for r in reqs):
            assert time.monotonic() < end, "timed out"
            time.sleep(0.01)
        core.stop()
        return [r.output_token_ids for r in reqs], core.counters.lookahead_steps

    greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    weights = load_checkpoint(tiny)
    got, ahead = engine(True, greedy)
    assert got == [reference_greedy(weights, p, 20) for p in prompts]
    assert ahead > 0 and runner.graphs.replays > 0
    seeded = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=3, ignore_eos=True)
    assert engine(True, seeded)[0] == engine(False, seeded)[0]

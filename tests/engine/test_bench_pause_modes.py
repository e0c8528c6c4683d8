"""The engine bench's pause-mode rows on a real engine: every mode keeps its promises, and
the recompute the bench measures after a retract is exactly the retracted requests' tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.engine_bench import PAUSE_MODES, mode_checks, pause_under_load, recompute_cost
from engine_pod.launcher import EnginePod
from tests.engine.conftest import complete

RUNNING, WAITING, MAX_TOKENS = 4, 2, 48


@pytest.fixture(scope="module")
def pod(tmp_path_factory) -> Iterator[EnginePod]:
    """No prefix cache: a retracted request recomputes every token it had."""
    log = tmp_path_factory.mktemp("bench-modes") / "engine.log"
    with EnginePod(
        "--max-num-seqs", str(RUNNING),
        "--num-kv-blocks", "128",
        "--no-prefix-cache",
        "--debug-step-delay-ms", "10",
        log_path=log,
    ) as p:  # fmt: skip
        yield p


@pytest.mark.parametrize("mode", PAUSE_MODES)
def test_pause_mode_row_keeps_its_promises(pod: EnginePod, mode: str) -> None:
    p = asyncio.run(pause_under_load(pod.url, RUNNING, WAITING, MAX_TOKENS, mode, tokens_each=8))
    checks = mode_checks(p)
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}
    assert 0 < p["partial_tokens"] < RUNNING * MAX_TOKENS  # paused mid-stream
    if mode == "abort":
        return
    assert p["resume_to_first_new_token_s"] > 0
    assert p["round_trip_s"] > p["pause_s"]
    cost = p["after_resume"]
    if mode == "keep":
        assert cost["recompute_steps"] == 0 and cost["first_step_x_decode"] is not None
        return
    # The load's prompts ("load 0", …) and what the engine made of them.
    lengths = {
        complete(pod, f"load {i}", max_tokens=1).json()["usage"]["prompt_tokens"]
        for i in range(RUNNING + WAITING)
    }
    assert len(lengths) == 1
    # prompt + generated tokens of every retracted request, less the one decode feeds anyway
    assert cost["recompute_tokens"] == p["partial_tokens"] + RUNNING * (lengths.pop() - 1)
    assert cost["recompute_steps"] == 1 and cost["decode_steps"] >= 1


def test_recompute_cost_reads_the_engine_step_records() -> None:
    steps = [[11, 8, 408, 0.05], [12, 8, 8, 0.01], [13, 8, 8, 0.03], [14, 8, 8, 0.01]]
    c = recompute_cost(steps, 8)
    assert (c["recompute_steps"], c["recompute_tokens"], c["decode_steps"]) == (1, 400, 3)
    assert c["extra_s"] == pytest.approx(0.04) and c["s_per_token"] == pytest.approx(1e-4)
    assert c["first_step_x_decode"] == pytest.approx(5.0)
    assert recompute_cost(steps[1:], 8)["recompute_tokens"] == 0  # keep: decode at once

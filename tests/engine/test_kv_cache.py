"""Block manager: exact accounting, prefix reuse, eviction, reset, version salt."""

from __future__ import annotations

import pytest

from engine_pod.engine.kv_cache import BlockManager
from engine_pod.engine.request import Request
from engine_pod.model.base import SamplingParams


def req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams())


def test_allocate_and_free_account_exactly():
    bm = BlockManager(8, 4)
    a = req("a", list(range(10)))
    assert bm.allocate(a, 10)
    assert bm.tables["a"] and len(bm.tables["a"]) == 3
    assert (bm.num_used, bm.num_free) == (3, 5)
    a.num_computed_tokens = 10
    assert bm.blocks_needed(a, 2) == 0 and bm.blocks_needed(a, 3) == 1
    assert bm.free("a") == 3
    assert (bm.num_used, bm.num_free) == (0, 8)
    assert bm.free("a") == 0  # double free is harmless


def test_allocation_fails_without_partial_change():
    bm = BlockManager(2, 4)
    a = req("a", list(range(12)))
    assert not bm.allocate(a, 12)
    assert bm.num_used == 0 and "a" not in bm.tables


def test_prefix_cache_reuses_full_blocks_and_leaves_one_token():
    bm = BlockManager(16, 4)
    prompt = list(range(12))
    a = req("a", prompt)
    bm.allocate(a, 12)
    a.num_computed_tokens = 12
    bm.register_full_blocks(a)
    b = req("b", prompt)
    cached = bm.take_cached_prefix(b)
    # 12 tokens = 3 full blocks, but the last token must be computed: only 2 blocks reused
    assert cached == 8
    assert bm.tables["b"] == bm.tables["a"][:2]
    assert bm.num_used == 3  # shared blocks counted once
    bm.free("a")
    assert bm.num_used == 2
    bm.free("b")
    assert bm.num_used == 0
    assert bm.stats().cached_blocks == 3  # free, but still reusable


def test_cached_block_is_evicted_when_space_is_needed():
    bm = BlockManager(2, 4)
    a = req("a", list(range(8)))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.register_full_blocks(a)
    bm.free("a")
    c = req("c", [99] * 8)
    assert bm.allocate(c, 8)
    assert bm.stats().cached_blocks == 0
    bm.free("c")
    assert bm.take_cached_prefix(req("d", list(range(8)) + [1])) == 0


def test_version_salt_separates_prefixes():
    bm = BlockManager(8, 4)
    a = req("a", list(range(9)))
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.register_full_blocks(a)
    bm.free("a")
    bm.hash_salt = "step-2"
    assert bm.take_cached_prefix(req("b", list(range(9)))) == 0


def test_reset_frees_everything():
    bm = BlockManager(8, 4)
    for i in range(3):
        bm.allocate(req(f"r{i}", [i] * 5), 5)
    assert bm.num_used == 6
    assert bm.reset() == 6
    assert bm.num_used == 0 and bm.num_free == 8 and not bm.tables


def test_rejects_bad_geometry():
    with pytest.raises(ValueError):
        BlockManager(0, 4)

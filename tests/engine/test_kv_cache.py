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


def test_blocks_registered_step_by_step_hash_as_the_whole_sequence_at_once():
    """Each step hashes only the blocks that became full (chained to the last one); the
    result is the prefix cache a one-shot registration of the whole sequence builds."""
    steps = BlockManager(32, 4)
    once = BlockManager(32, 4)
    a, b = req("a", list(range(10))), req("a", list(range(10)))
    for bm, r in ((steps, a), (once, b)):
        bm.allocate(r, 10)
        r.num_computed_tokens = 10
    steps.register_full_blocks(a)
    for t in range(100, 117):  # decode: one token a step
        for bm, r in ((steps, a), (once, b)):
            r.output_token_ids.append(t)
            bm.allocate(r, 1)
            r.num_computed_tokens += 1
        steps.register_full_blocks(a)
    once.register_full_blocks(b)
    assert steps.tables["a"] == once.tables["a"]
    assert steps._block_hash == once._block_hash and len(once._block_hash) == 6
    # a new request with the same 26 tokens takes every full block but the one holding its last
    steps.free("a")
    assert steps.take_cached_prefix(req("c", a.all_token_ids)) == 24


def test_new_salt_mid_sequence_chains_from_the_start():
    bm = BlockManager(16, 4)
    a = req("a", list(range(8)))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.register_full_blocks(a)
    bm.hash_salt = "step-2"
    a.output_token_ids += [50, 51, 52, 53]
    bm.allocate(a, 4)
    a.num_computed_tokens = 12
    bm.register_full_blocks(a)
    bm.free("a")
    # the third block was hashed under the new salt, chained from a start under it too: a
    # request after the update hits only what that chain covers
    fresh = BlockManager(16, 4)
    fresh.hash_salt = "step-2"
    want = fresh._chain_hashes(a.all_token_ids, 3)[2]
    assert want in bm._hash_to_block
    assert bm.take_cached_prefix(req("b", a.all_token_ids + [1])) == 0  # blocks 1-2: old salt


def test_token_slice_is_a_slice_of_all_tokens():
    r = Request("r", [1, 2, 3, 4, 5], SamplingParams(), output_token_ids=[6, 7, 8])
    for start in range(9):
        for n in range(0, 10 - start):
            assert r.token_slice(start, n) == r.all_token_ids[start : start + n], (start, n)


def test_a_long_decode_hashes_each_block_once():
    """Registration after every step hashes only newly full blocks: a step's cost does not
    grow with the context."""
    bm = BlockManager(512, 4)
    hashed = []
    chain = bm._chain_hashes
    bm._chain_hashes = lambda toks, n, parent=None: hashed.append(n) or chain(toks, n, parent)
    a = req("a", list(range(40)))
    bm.allocate(a, 40)
    a.num_computed_tokens = 40
    bm.register_full_blocks(a)
    for t in range(400):
        a.output_token_ids.append(t)
        bm.allocate(a, 1)
        a.num_computed_tokens += 1
        bm.register_full_blocks(a)
    assert sum(hashed) == 440 // 4 and max(hashed) == 10  # the prompt's 10, then one at a time

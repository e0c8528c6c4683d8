"""Paged KV cache bookkeeping: fixed-size blocks, block tables, reference counts and a prefix cache.

The block manager owns no tensors; block ids index the runner's cache tensors.
A block is *used* while some request references it. A full block keeps its
content hash after release, so a later request with the same prefix (under the
same weights version) can take it back from the free list instead of
recomputing it; allocating a fresh block evicts the least recently freed one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from engine_pod.engine.request import Request


@dataclass(frozen=True)
class KVStats:
    total_blocks: int
    used_blocks: int
    cached_blocks: int  # free blocks that still hold a reusable prefix

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks


class BlockManager:
    """Allocates cache blocks to requests; exact free-block accounting."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        # The weights version salts every block hash: a prefix hit never crosses versions.
        self.hash_salt = ""
        self._ref: list[int] = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._block_hash: dict[int, bytes] = {}
        self._hash_to_block: dict[bytes, int] = {}
        self.tables: dict[str, list[int]] = {}
        # per request: (salt, full blocks hashed so far, the last one's hash): each step hashes
        # only the blocks that became full, not the whole context again
        self._hashed: dict[str, tuple[str, int, bytes]] = {}
        self.prefix_hits = 0  # tokens served from the prefix cache

    # -- accounting ---------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def stats(self) -> KVStats:
        cached = sum(1 for b in self._free if b in self._block_hash)
        return KVStats(self.num_blocks, self.num_used, cached)

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Blocks to add so `request` can hold `num_new_tokens` more tokens."""
        have = len(self.tables.get(request.request_id, ()))
        need = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, need - have)

    # -- prefix cache -------------------------------------------------------------
    def _chain_hashes(
        self, token_ids: list[int], num_blocks: int, parent: bytes | None = None
    ) -> list[bytes]:
        """Hashes of `num_blocks` full blocks of `token_ids`, each chained to the one before
        (`parent`: the hash before the first; default the salt: the sequence's start)."""
        hashes: list[bytes] = []
        parent = self.hash_salt.encode() if parent is None else parent
        bs = self.block_size
        for i in range(num_blocks):
            chunk = token_ids[i * bs : (i + 1) * bs]
            h = hashlib.blake2b(parent + b"|" + ",".join(map(str, chunk)).encode(), digest_size=16)
            parent = h.digest()
            hashes.append(parent)
        return hashes

    def take_cached_prefix(self, request: Request) -> int:
        """At admission: reuse cached full blocks of the prompt; return how many tokens they cover.

        At least one prompt token is always left to compute, so the step that
        finishes the prompt produces logits to sample from.
        """
        if not self.enable_prefix_cache or request.request_id in self.tables:
            return 0
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        table: list[int] = []
        for h in self._chain_hashes(tokens, max_blocks):
            block = self._hash_to_block.get(h)
            if block is None:
                break
            if self._ref[block] == 0:
                del self._free[block]
            self._ref[block] += 1
            table.append(block)
        if table:
            self.tables[request.request_id] = table
        cached = len(table) * self.block_size
        self.prefix_hits += cached
        return cached

    def register_full_blocks(self, request: Request) -> None:
        """After a step: publish the request's newly full blocks to the prefix cache."""
        if not self.enable_prefix_cache:
            return
        rid = request.request_id
        table = self.tables.get(rid)
        if not table:
            return
        full = min(request.num_computed_tokens // self.block_size, len(table))
        salt, done, parent = self._hashed.get(rid, (self.hash_salt, 0, b""))
        if salt != self.hash_salt:  # new weights since: chain again from the start
            done = 0
        if full <= done:
            return
        bs = self.block_size
        tokens = request.token_slice(done * bs, (full - done) * bs)
        hashes = self._chain_hashes(tokens, full - done, parent if done else None)
        self._hashed[rid] = (self.hash_salt, full, hashes[-1])
        for block, h in zip(table[done:full], hashes, strict=True):
            if block in self._block_hash:
                continue
            if h in self._hash_to_block:  # same content already cached in another block
                continue
            self._block_hash[block] = h
            self._hash_to_block[h] = block

    # -- allocation ---------------------------------------------------------------
    def allocate(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the request's block table for `num_new_tokens`; False (and no change) if out of blocks."""
        n = self.blocks_needed(request, num_new_tokens)
        if n > len(self._free):
            return False
        table = self.tables.setdefault(request.request_id, [])
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            old = self._block_hash.pop(block, None)
            if old is not None:
                self._hash_to_block.pop(old, None)
            self._ref[block] = 1
            table.append(block)
        return True

    def free(self, request_id: str) -> int:
        """Release a request's blocks; return how many became free."""
        table = self.tables.pop(request_id, None)
        self._hashed.pop(request_id, None)
        if not table:
            return 0
        freed = 0
        # Free tail first so the LRU free list evicts a sequence's last blocks first.
        for block in reversed(table):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
                freed += 1
        return freed

    def reset(self) -> int:
        """Forget everything: every block free, prefix cache empty. Returns blocks that were in use."""
        used = self.num_used
        self._ref = [0] * self.num_blocks
        self._free = OrderedDict((b, None) for b in range(self.num_blocks))
        self._block_hash.clear()
        self._hash_to_block.clear()
        self.tables.clear()
        self._hashed.clear()
        return used

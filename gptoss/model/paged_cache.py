"""A paged KV cache: fixed-size blocks of positions handed out by a block manager.

Keys and values live in pages ``[num_blocks, block_size, kv_heads, head_dim]`` per layer. Layers fall in
two groups that share one block table per sequence: ``full`` (dense layers: blocks for every position) and
``sliding`` (banded layers: only blocks that a future query can still see — a block is given back as soon
as it lies wholly before ``length - window + 1``). Block 0 of each group is a null block that is never
handed out: unused table entries point at it, and padded rows of a CUDA-graph batch write into it.

Sequences are named by *slots* (integers), as with :class:`~gptoss.model.cache.KVCache`, so the engine's
scheduler and prefix cache work with either. ``copy_slot(src, dst, length)`` shares the full blocks of the
prefix (reference counts) and copies only the last, partly filled block, which ``dst`` will write into.

A step: ``meta = cache.prepare(slots, starts, lens)`` allocates the blocks the new tokens need and
describes the step (:class:`PagedMeta`); the model writes the new keys/values into the pages and attends
over them; ``cache.finish(meta)`` gives back the blocks the band has left.

Prefix caching (vLLM's automatic prefix caching): every block that a step fills is keyed by a hash chain of
the tokens up to its end (and the sequence's *salt*, so that only requests of one owner share them). A block
whose last user let go stays where it is, on a least-recently-used list, until the pool needs it for
something else; :meth:`PagedKVCache.adopt` gives a new sequence its longest cached prefix of whole blocks.
Banded layers keep their blocks the same way: a block that leaves a running sequence's band goes to the
list instead of back to the pool, so the band at any cached block boundary can be found again exactly (the
alternative, a copy of the 128-token ring at each boundary, costs ``window / block_size`` blocks a boundary
instead of one block per ``block_size`` tokens).

On the CPU, pools of more than 64 MiB are allocated without being written (fresh pages from the OS are zero
and take no memory until used), so a large budget costs only what is filled.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from gptoss.errors import GptossError
from gptoss.model.config import ModelConfig

FULL, SLIDING = "full", "sliding"


class NoFreeBlocks(GptossError):
    """The cache has no free block left (the scheduler preempts a sequence before this happens)."""


class BlockAllocator:
    """Reference-counted blocks ``1 .. num_blocks-1`` (block 0 is the null block). A block may be *cached*
    (registered under the hash of its content): when its last reference goes it waits on a least recently
    used list, still findable by :meth:`lookup`, and is evicted (its hash forgotten) only when a block is
    needed and no never-cached one is free."""

    def __init__(self, num_blocks: int):
        if num_blocks < 2:
            raise ValueError(f"a block pool needs at least 2 blocks (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self.free_list = list(range(num_blocks - 1, 0, -1))
        self.cached: dict[bytes, int] = {}  # content hash -> block
        self.hash_of: dict[int, bytes] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, oldest first
        self.evictions = 0

    @property
    def num_free(self) -> int:
        return len(self.free_list) + len(self.evictable)

    def allocate(self) -> int:
        if self.free_list:
            block = self.free_list.pop()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.hash_of.pop(block)]
            self.evictions += 1
        else:
            raise NoFreeBlocks(f"all {self.num_blocks - 1} KV-cache blocks are in use")
        self.refs[block] = 1
        return block

    def share(self, block: int) -> int:
        if self.refs[block] == 0:
            assert block in self.evictable, block
            del self.evictable[block]
        self.refs[block] += 1
        return block

    def release(self, block: int) -> None:
        if block == 0:
            return
        assert self.refs[block] > 0, block
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if block in self.hash_of:
                self.evictable[block] = None  # most recently used last
            else:
                self.free_list.append(block)

    def register(self, block: int, key: bytes) -> None:
        """Key a full block by the hash of its tokens (a block already keyed, or a key already taken by an
        identical block, is left as it is)."""
        if block and key not in self.cached and block not in self.hash_of:
            self.cached[key] = block
            self.hash_of[block] = key

    def lookup(self, key: bytes) -> int | None:
        return self.cached.get(key)

    def forget_all(self) -> None:
        """Drop every cached key (the blocks stay with whoever holds them)."""
        for block in self.evictable:
            self.free_list.append(block)
        self.evictable.clear()
        self.cached.clear()
        self.hash_of.clear()


def salt_key(salt: str | bytes | None) -> bytes:
    """The root of a hash chain: requests with different salts never share a block."""
    raw = salt.encode() if isinstance(salt, str) else (salt or b"")
    return hashlib.blake2b(b"gptoss-kv\0" + raw, digest_size=16).digest()


def chain_hashes(parent: bytes, tokens: list[int], block_size: int, first: int = 0) -> list[bytes]:
    """Hashes of the full blocks of ``tokens`` from block ``first`` on, each over its parent's hash and its
    own tokens (``parent``: the hash of block ``first - 1``, or the salt's root)."""
    out = []
    for b in range(first, len(tokens) // block_size):
        chunk = array("q", tokens[b * block_size : (b + 1) * block_size]).tobytes()
        parent = hashlib.blake2b(parent + chunk, digest_size=16).digest()
        out.append(parent)
    return out


@dataclass
class PagedMeta:
    """One step over the paged cache: sequence ``b`` (slot ``slots[b]``) appends ``lens[b]`` tokens after
    ``starts[b]`` cached ones. Device tensors for the model, host lists for the cache's bookkeeping."""

    positions: torch.Tensor  # [N] long, position of each new token
    cu_q: torch.Tensor  # [B] long, index of each sequence's first new token
    q_lens: torch.Tensor  # [B] long
    kv_lens: torch.Tensor  # [B] long, keys after the step (starts + lens)
    last_index: torch.Tensor  # [B] long, flat index of each sequence's last new token
    block_tables: dict[str, torch.Tensor]  # group -> [B, max_blocks] long
    slot_mapping: dict[str, torch.Tensor]  # group -> [N] long, cache row (block * block_size + offset)
    max_q_len: int
    slots: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)
    seq_index: torch.Tensor | None = None  # [N] long, the row of ``block_tables`` each new token belongs to
    tokens: list[int] | None = None  # the step's tokens (host), so that finish() can key the blocks they fill

    @property
    def batch_size(self) -> int:
        return len(self.slots)


class PagedKVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_slots: int,
        max_len: int,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_step_tokens: int = 2048,
        device=None,
        dtype: torch.dtype = torch.float32,
        prefix_caching: bool = True,
    ):
        """``num_blocks``: blocks of each pool (default: enough for every slot to reach ``max_len``, so
        nothing ever waits for blocks). Both groups get as many: banded layers keep the blocks that left a
        band as cache (see the module's notes). ``prefix_caching``: key full blocks and keep them after their
        sequence ends (off: a block goes back to the pool as soon as nobody holds it)."""
        self.config = config
        self.num_slots = num_slots
        self.max_len = max_len
        self.block_size = block_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.prefix_caching = prefix_caching
        self.max_blocks_per_seq = -(-max_len // block_size)
        self.layer_group = [SLIDING if config.window(n) else FULL for n in range(config.num_hidden_layers)]
        self.windows = {FULL: 0, SLIDING: config.sliding_window}
        sizes: dict[str, int] = {}
        if FULL in self.layer_group:
            # (a pool smaller than one sequence of max_len is allowed: the engine refuses longer prompts)
            sizes[FULL] = num_blocks if num_blocks is not None else 1 + num_slots * self.max_blocks_per_seq
        if SLIDING in self.layer_group:
            if FULL in sizes:
                sizes[SLIDING] = sizes[FULL]
            else:  # every layer banded: the pool holds each slot's band and one step's new tokens
                band = -(-config.sliding_window // block_size) + 2
                step = -(-max_step_tokens // block_size) + num_slots
                sizes[SLIDING] = max(num_blocks or 0, 1 + num_slots * band + step)
        self.allocators = {g: BlockAllocator(n) for g, n in sizes.items()}
        self.tables: dict[str, list[list[int]]] = {g: [[] for _ in range(num_slots)] for g in sizes}
        # What each slot's cache holds, for keying its blocks: its tokens, the hashes of its full blocks,
        # and its salt (None: the tokens are unknown, so its blocks are never keyed).
        self.slot_tokens: list[list[int] | None] = [[] for _ in range(num_slots)]
        self.slot_hashes: list[list[bytes]] = [[] for _ in range(num_slots)]
        self.salts: list[bytes] = [salt_key(None)] * num_slots
        self.hit_tokens = 0  # positions handed out by adopt() so far
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        hk, d = config.num_key_value_heads, config.head_dim
        for group in self.layer_group:
            shape = (sizes[group], block_size, hk, d)
            self.k.append(_pool(shape, self.device, dtype))
            self.v.append(_pool(shape, self.device, dtype))

    # ------------------------------------------------------------------ accounting
    @property
    def groups(self) -> list[str]:
        return list(self.allocators)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def num_free(self) -> dict[str, int]:
        return {g: a.num_free for g, a in self.allocators.items()}

    def _needed_range(self, group: str, start: int, n: int) -> range:
        """Logical blocks that must exist to write positions ``[start, start+n)`` and attend over them."""
        end = start + n
        lo = 0
        if self.windows[group]:
            lo = max(0, start - self.windows[group] + 1)
        return range(lo // self.block_size, -(-end // self.block_size))

    def blocks_needed(self, slot: int, start: int, n: int) -> dict[str, int]:
        """Blocks each group must hand out for slot ``slot`` to run ``n`` tokens after ``start``."""
        out = {}
        for group, tables in self.tables.items():
            table = tables[slot] if start else []
            out[group] = sum(1 for b in self._needed_range(group, start, n) if b >= len(table) or not table[b])
        return out

    def fits(self, needed: dict[str, int]) -> bool:
        return all(needed.get(g, 0) <= a.num_free for g, a in self.allocators.items())

    # ------------------------------------------------------------------ per-slot blocks
    @property
    def capacity_tokens(self) -> int:
        """The most positions one sequence can hold: the smaller pool, less the null block."""
        return min(a.num_blocks - 1 for a in self.allocators.values()) * self.block_size

    def free(self, slot: int) -> None:
        """Give back every block of ``slot`` (its sequence finished or was preempted). Last block first, so
        that under memory pressure a cached prefix loses its tail before its head."""
        for group, tables in self.tables.items():
            for block in reversed(tables[slot]):
                self.allocators[group].release(block)
            tables[slot] = []
        self.slot_tokens[slot] = []
        self.slot_hashes[slot] = []

    def adopt(self, slot: int, tokens: list[int], salt: str | bytes | None = None) -> int:
        """Give the new sequence ``tokens`` in ``slot`` (emptied first) the longest cached prefix of whole
        blocks under ``salt``, leaving at least its last token to compute (its logits are needed). On banded
        layers only the blocks a query after the prefix can see are needed, so a prefix whose band is
        cached counts even if its older banded blocks were evicted. Returns the positions now cached."""
        self.free(slot)
        root = salt_key(salt)
        self.salts[slot] = root
        if not self.prefix_caching or len(tokens) <= self.block_size:
            return 0
        bs = self.block_size
        hashes = chain_hashes(root, list(tokens[: len(tokens) - 1]), bs)
        k = len(hashes)
        if FULL in self.allocators:
            full = self.allocators[FULL]
            k = next((i for i, h in enumerate(hashes) if full.lookup(h) is None), k)
        if SLIDING in self.allocators:
            band = self.allocators[SLIDING]
            while k and any(band.lookup(hashes[b]) is None for b in self._needed_range(SLIDING, k * bs, 0)):
                k -= 1
        if not k:
            return 0
        for group, tables in self.tables.items():
            alloc = self.allocators[group]
            lo = self._needed_range(group, k * bs, 0).start
            tables[slot] = [0] * lo + [alloc.share(alloc.lookup(h)) for h in hashes[lo:k]]
        self.slot_tokens[slot] = list(tokens[: k * bs])
        self.slot_hashes[slot] = hashes[:k]
        self.hit_tokens += k * bs
        return k * bs

    def forget_cached(self) -> None:
        """Drop every cached prefix (what ``prefix_caching=False`` would have kept)."""
        for alloc in self.allocators.values():
            alloc.forget_all()

    def _record(self, slot: int, start: int, tokens: list[int]) -> None:
        """After a step: ``tokens`` now sit at positions ``start...`` of ``slot``; key the blocks they filled."""
        held = self.slot_tokens[slot]
        if held is None or len(held) < start:  # positions of unknown tokens before these: never key them
            self.slot_tokens[slot] = None
            return
        del held[start:]
        held.extend(tokens)
        hashes = self.slot_hashes[slot]
        del hashes[len(held) // self.block_size :]
        parent = hashes[-1] if hashes else self.salts[slot]
        new = chain_hashes(parent, held, self.block_size, first=len(hashes))
        for i, key in enumerate(new, start=len(hashes)):
            for group, tables in self.tables.items():
                table = tables[slot]
                if i < len(table) and table[i]:
                    self.allocators[group].register(table[i], key)
        hashes.extend(new)

    def allocate(self, slot: int, start: int, n: int) -> None:
        """Make sure ``slot`` has blocks for ``n`` new tokens after ``start`` (``start == 0``: a new sequence
        takes the slot, and whatever it held is given back first)."""
        if start + n > self.max_len:
            raise GptossError(f"slot {slot}: {start + n} positions exceed the cache's max_len {self.max_len}")
        if start == 0:
            self.free(slot)
        for group, tables in self.tables.items():
            table = tables[slot]
            needed = self._needed_range(group, start, n)
            if len(table) < needed.stop:
                table.extend([0] * (needed.stop - len(table)))
            for b in needed:
                if not table[b]:
                    table[b] = self.allocators[group].allocate()

    def release_band(self, slot: int, length: int) -> None:
        """Banded layers: give back the blocks no query at position ``>= length`` can see."""
        if SLIDING not in self.tables:
            return
        table = self.tables[SLIDING][slot]
        keep_from = max(0, length - self.windows[SLIDING] + 1)
        for b in range(min(len(table), keep_from // self.block_size)):
            if table[b]:
                self.allocators[SLIDING].release(table[b])
                table[b] = 0

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Make ``dst`` hold the first ``length`` positions of ``src`` (prefix reuse): whole blocks are
        shared, the last partly filled block is copied."""
        if src == dst:
            return
        bs = self.block_size
        partial = {g: int(length % bs != 0) for g in self.tables}
        if not self.fits(partial):
            raise NoFreeBlocks(f"copy_slot: no free block for the last {length % bs} positions of the prefix")
        self.free(dst)
        for group, tables in self.tables.items():
            source = tables[src]
            lo = max(0, length - self.windows[group] + 1) if self.windows[group] else 0
            table = [0] * (-(-length // bs))
            alloc = self.allocators[group]
            for b in range(lo // bs, len(table)):
                if b >= len(source) or not source[b]:
                    raise GptossError(f"copy_slot: slot {src} holds no block {b} for position {b * bs}")
                if (b + 1) * bs <= length:
                    table[b] = alloc.share(source[b])
                else:
                    table[b] = alloc.allocate()
                    for layer, g in enumerate(self.layer_group):
                        if g == group:
                            self.k[layer][table[b]] = self.k[layer][source[b]]
                            self.v[layer][table[b]] = self.v[layer][source[b]]
            tables[dst] = table
        held = self.slot_tokens[src]
        self.slot_tokens[dst] = None if held is None or len(held) < length else held[:length]
        self.slot_hashes[dst] = self.slot_hashes[src][: length // bs]
        self.salts[dst] = self.salts[src]

    # ------------------------------------------------------------------ steps
    def prepare(
        self, slots: list[int], starts: list[int], lens: list[int], tokens: list[int] | None = None
    ) -> PagedMeta:
        """Allocate blocks for one step and describe it for the model. ``tokens`` (flat, as the step runs
        them): what :meth:`finish` keys the filled blocks by; without them the slots' blocks are never cached."""
        for slot, start, n in zip(slots, starts, lens):
            self.allocate(slot, start, n)
        meta = self.describe(slots, starts, lens)
        meta.tokens = tokens
        return meta

    def describe(self, slots: list[int], starts: list[int], lens: list[int]) -> PagedMeta:
        """The :class:`PagedMeta` of a step whose blocks are already allocated. Everything the device needs
        travels in one host-to-device copy."""
        bs = self.block_size
        positions, cu, last, seq_index = [], [], [], []
        for b, (start, n) in enumerate(zip(starts, lens)):
            cu.append(len(positions))
            positions.extend(range(start, start + n))
            seq_index.extend([b] * n)
            last.append(len(positions) - 1)
        kv_lens = [s + n for s, n in zip(starts, lens)]
        width = max(-(-k // bs) for k in kv_lens) if kv_lens else 0
        flat = positions + cu + list(lens) + kv_lens + last + seq_index
        for all_tables in self.tables.values():
            for slot in slots:
                flat.extend((all_tables[slot] + [0] * width)[:width])
            for slot, start, n in zip(slots, starts, lens):
                table = all_tables[slot]
                flat.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
        dev = self._upload(flat)
        n_tok, b = len(positions), len(slots)
        fields = dev[: 2 * n_tok + 4 * b].split([n_tok, b, b, b, b, n_tok])
        tables, mapping = {}, {}
        offset = 2 * n_tok + 4 * b
        for group in self.tables:
            tables[group] = dev[offset : offset + b * width].view(b, width)
            mapping[group] = dev[offset + b * width : offset + b * width + n_tok]
            offset += b * width + n_tok
        return PagedMeta(
            positions=fields[0],
            cu_q=fields[1],
            q_lens=fields[2],
            kv_lens=fields[3],
            last_index=fields[4],
            block_tables=tables,
            slot_mapping=mapping,
            max_q_len=max(lens) if lens else 0,
            slots=list(slots),
            starts=list(starts),
            lens=list(lens),
            seq_index=fields[5],
        )

    def _upload(self, values: list[int]) -> torch.Tensor:
        """Integers to the device in one copy. On CUDA through a ring of pinned buffers, so the copy is
        asynchronous and the host can describe the next step while the GPU still runs this one."""
        host = torch.tensor(values, dtype=torch.long)
        if self.device.type != "cuda":
            return host.to(self.device)
        if not hasattr(self, "_ring"):
            self._ring: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
            self._ring_next = 0
        i = self._ring_next
        self._ring_next = (i + 1) % 4
        if i == len(self._ring):
            self._ring.append((torch.empty(0, dtype=torch.long), None))
        buf, event = self._ring[i]
        if event is not None:
            event.synchronize()  # the copy that last used this buffer is done
        if buf.numel() < host.numel():
            buf = torch.empty(max(host.numel(), 2 * buf.numel(), 4096), dtype=torch.long, pin_memory=True)
        buf[: host.numel()].copy_(host)
        dev = torch.empty(host.numel(), dtype=torch.long, device=self.device)
        dev.copy_(buf[: host.numel()], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._ring[i] = (buf, event)
        return dev

    def finish(self, meta: PagedMeta) -> None:
        """After a step (it ran: what it wrote is there): key the blocks it filled, then banded layers give
        back the blocks their band has left (cached ones stay findable until evicted)."""
        offset = 0
        for slot, start, n in zip(meta.slots, meta.starts, meta.lens):
            if self.prefix_caching and meta.tokens is not None:
                self._record(slot, start, meta.tokens[offset : offset + n])
            offset += n
            self.release_band(slot, start + n)


def _pool(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A block pool, zero-filled. On the CPU a large one is left unwritten: the OS hands out fresh zero pages
    for it (allocations this large are always new mappings), which take memory only once written."""
    numel = 1
    for n in shape:
        numel *= n
    if device.type == "cpu" and numel * torch.empty((), dtype=dtype).element_size() > 64 * 2**20:
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.zeros(shape, device=device, dtype=dtype)

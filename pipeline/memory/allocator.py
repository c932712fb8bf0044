"""TensorFlow's BFC allocator, in bytes: the chunks a sequence of allocations really holds.

The liveness simulation counts tensor bytes; the allocator holds chunks. It hands out a
free chunk whole when the chunk is under twice the request, so a tensor can hold up to
twice its size, and whether it does depends on the order of earlier allocations.
``simulated_peak`` replays the weights' creation (``create_variables``) and a training
step's allocations (``pipeline.memory.liveness``) through the same rules.
`make bench-memory --replay` checks the model against real traces.
"""

from __future__ import annotations

import bisect


class BFCModel:
    """TensorFlow's BFC allocator (``tsl/framework/bfc_allocator.cc``), in bytes only.

    Its rules: requests rounded up to 256 bytes; free chunks kept in bins of power-of-two
    sizes, the smallest chunk that fits taken first (ties by address); a chunk split only
    when it is at least twice the rounded request (or 128 MiB more); a freed chunk merged
    with free neighbours of its region; when nothing fits, a new region, whose size doubles
    each time. ``in_use`` and ``peak`` count chunk bytes, as ``get_memory_info`` does.
    """

    MIN_CHUNK = 256
    BINS = 21
    SPLIT_ALWAYS = 128 << 20

    def __init__(self, first_region: int = 2 << 20):
        self.region_bytes = first_region
        self.chunks: dict[int, list[int]] = {}  # address -> [size, in use, region]
        self.addresses: list[int] = []  # sorted
        self.free_bins: list[list[tuple[int, int]]] = [[] for _ in range(self.BINS)]
        self.next_region = 0
        self.in_use = self.peak = 0

    def _bin(self, size: int) -> int:
        return min(max(size >> 8, 1).bit_length() - 1, self.BINS - 1)

    def _free_chunk(self, address: int, insert: bool) -> None:
        entry = (self.chunks[address][0], address)
        free = self.free_bins[self._bin(entry[0])]
        if insert:
            bisect.insort(free, entry)
        else:
            free.pop(bisect.bisect_left(free, entry))

    def _new_chunk(self, address: int, size: int, region: int) -> None:
        self.chunks[address] = [size, 0, region]
        bisect.insort(self.addresses, address)
        self._free_chunk(address, insert=True)

    def _fitting(self, size: int) -> int | None:
        for free in self.free_bins[self._bin(size) :]:
            for chunk_size, address in free:
                if chunk_size >= size:
                    return address
        return None

    def allocate(self, nbytes: int) -> int:
        """The address of the chunk given for ``nbytes``."""
        size = max(self.MIN_CHUNK, -(-nbytes // self.MIN_CHUNK) * self.MIN_CHUNK)
        address = self._fitting(size)
        if address is None:
            grew = size > self.region_bytes
            while size > self.region_bytes:
                self.region_bytes *= 2
            address = self.next_region
            self.next_region += self.region_bytes << 1  # regions are never neighbours
            self._new_chunk(address, self.region_bytes, address)
            if not grew:
                self.region_bytes *= 2
        self._free_chunk(address, insert=False)
        chunk = self.chunks[address]
        if chunk[0] >= 2 * size or chunk[0] - size >= self.SPLIT_ALWAYS:
            self._new_chunk(address + size, chunk[0] - size, chunk[2])
            chunk[0] = size
        chunk[1] = 1
        self.in_use += chunk[0]
        self.peak = max(self.peak, self.in_use)
        return address

    def _merge(self, low: int, high: int, free: int) -> None:
        """Merge ``high`` into ``low``, neighbours in one region; ``free`` is the one of them
        in a free bin."""
        self._free_chunk(free, insert=False)
        self.chunks[low][0] += self.chunks.pop(high)[0]
        self.addresses.remove(high)

    def _neighbours(self, low: int, high: int) -> bool:
        a, b = self.chunks[low], self.chunks[high]
        return not (a[1] or b[1]) and a[2] == b[2] and low + a[0] == high

    def free(self, address: int) -> None:
        chunk = self.chunks[address]
        chunk[1] = 0
        self.in_use -= chunk[0]
        at = bisect.bisect_left(self.addresses, address)
        if at + 1 < len(self.addresses) and self._neighbours(address, self.addresses[at + 1]):
            self._merge(address, self.addresses[at + 1], free=self.addresses[at + 1])
        if at > 0 and self._neighbours(self.addresses[at - 1], address):
            before = self.addresses[at - 1]
            self._merge(before, address, free=before)
            address = before
        self._free_chunk(address, insert=True)


def create_variables(model: BFCModel, variables: list[tuple[int, bool]]) -> None:
    """Weight variables of ``(bytes, drawn)`` as Keras creates them, in order. A random
    initializer draws, scales and shifts (TensorFlow's stateless random ops): three buffers,
    the last kept as the variable, which is handed a chunk the earlier temporaries freed,
    up to twice its size. A constant initializer fills one buffer."""
    for nbytes, drawn in variables:
        if drawn:
            draw, scaled = model.allocate(nbytes), model.allocate(nbytes)
            model.allocate(nbytes)
            model.free(scaled)
            model.free(draw)
        elif nbytes:
            model.allocate(nbytes)


def simulated_peak(
    events: list[tuple],
    batch: int,
    value_bytes: int,
    weight_bytes: int,
    held: list[int],
    steps: int = 3,
    variables: list[tuple[int, bool]] | None = None,
) -> int:
    """Chunk bytes at the allocator's peak: the weight ``variables`` created
    (``create_variables``), then ``held`` allocations (optimizer slots, buffered input
    batches) made and kept, then ``steps`` training steps, each the tape's allocations
    (``pipeline.memory.liveness.Tape``) at this batch size.

    Several steps, because the first leaves free chunks that later steps are handed whole.
    """
    model = BFCModel()
    create_variables(model, variables or [])
    for nbytes in held:
        if nbytes:
            model.allocate(nbytes)
    for _ in range(steps):
        where: dict = {}
        for key, values, *rest in events:
            if values is None:
                model.free(where.pop(key))
            else:
                weights, scratch = rest
                where[key] = model.allocate(
                    values * batch * value_bytes + weights * weight_bytes + scratch
                )
    return model.peak

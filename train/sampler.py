"""Length-grouped, seeded, resumable batching, sharded across ranks."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


class LengthGroupedBatches:
    """Batches of similar length (little padding), in an order fixed by (seed, epoch).

    Each epoch: shuffle the indices, cut them into mega-batches of 50 global batches
    (batch_size x world_size samples), sort each by length, cut it into global batches,
    shuffle those. Rank r takes its slice of every global batch, so ranks see disjoint
    data and any number of ranks sees the same global batches. `skip` drops the first
    batches of the first epoch yielded (exact resume).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.rank, self.world_size = rank, world_size

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * self.world_size
        batches = []
        for start in range(0, len(order), size * 50):
            group = sorted(order[start:start + size * 50], key=lambda i: self.lengths[i])
            batches += [group[i:i + size] for i in range(0, len(group) - size + 1, size)]  # full batches only
        rng.shuffle(batches)
        return [b[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] for b in batches]

    def iterate(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, int, list[int]]]:
        """Yields (epoch, batch index in the epoch, indices) forever, from a resume point."""
        epoch = start_epoch
        while True:
            batches = self.epoch(epoch)
            if not batches:
                raise ValueError(f"the data set has fewer than batch_size x ranks = {self.batch_size * self.world_size} "
                                 f"samples: lower batch_size or add data")
            for i in range(skip, len(batches)):
                yield epoch, i, batches[i]
            epoch, skip = epoch + 1, 0

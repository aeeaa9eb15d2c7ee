"""Each rank's share of the batches, cut by capgap rather than by Lightning's DistributedSampler.

The global stream of samples is the one a single process draws (successive seeded shuffles of
the blocks for training, the blocks in order for evaluation); rank r of N takes its micro-
batches r, r + N, r + 2N, ... So 1 and N processes see the same global set of blocks, an
evaluation pads nothing (DistributedSampler repeats blocks to even the ranks out, which moves
the held-out loss with the device count) and no sampler reseeds by the job's seed. Each pass
re-derives the stream from its seed, so a resumed loader fast-forwards to the same place.
"""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import Sampler

from capgap.data.blocks import IGNORE


def shuffled(n: int, num_samples: int, seed: int):
    """`num_samples` indices from successive shuffles of range(n), as torch's RandomSampler
    draws them from a generator seeded with `seed` (a one-process run keeps its data order)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(num_samples // n):
        yield from torch.randperm(n, generator=g).tolist()
    yield from torch.randperm(n, generator=g).tolist()[:num_samples % n]


class RankShare(Sampler[int]):
    """Rank `rank` of `world`: its micro-batches of `batch_size` from the global stream
    (`shuffle`: seeded shuffles, `num_samples` long; else range(n) in order). A training
    stream is cut into whole global batches (drop_last); an evaluation stream keeps every
    block, so the last ranks may get one batch fewer, or a shorter one."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, shuffle: bool = False,
                 num_samples: int | None = None, seed: int = 0):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.shuffle, self.seed = shuffle, seed
        self.num_samples = n if num_samples is None else num_samples
        if shuffle:  # whole global batches, as drop_last
            self.num_samples -= self.num_samples % (batch_size * world)

    def _stream(self):
        return shuffled(self.n, self.num_samples, self.seed) if self.shuffle else iter(range(self.num_samples))

    def __iter__(self):
        stream = self._stream()
        for i in itertools.count():
            batch = list(itertools.islice(stream, self.batch_size))
            if not batch:
                return
            if i % self.world == self.rank:
                yield from batch

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        mine = full // self.world + (1 if full % self.world > self.rank else 0)
        last = rest if rest and full % self.world == self.rank else 0
        return mine * self.batch_size + last


class EvenBatches:
    """A rank's evaluation loader topped up with blank batches (every label ignored, so they
    weigh nothing in a token-weighted loss) to `batches`, the most any rank has: a sharded model
    (trainer=fsdp) gathers its weights from every rank in each forward, so every rank has to
    run as many forwards as the others."""

    def __init__(self, loader, batches: int):
        self.loader, self.batches, self.dataset = loader, batches, loader.dataset

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        n = 0
        for n, batch in enumerate(self.loader, 1):
            yield batch
        if n < self.batches:
            blank = self.loader.collate_fn([self.dataset[0]])
            blank["labels"].fill_(IGNORE)
            for _ in range(self.batches - n):
                yield blank

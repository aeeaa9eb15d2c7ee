"""The LightningDataModule every task trains and evaluates on.

Training batches come from torchdata's StatefulDataLoader, whose state Lightning stores in the
checkpoint, so a resumed run continues the data order where it stopped instead of replaying
an epoch. A fit sets `train_steps` (micro-batches over all ranks): the loader then yields
exactly this rank's share of them (capgap.data.rank_share), drawn as successive shuffles of
the blocks, so a whole run is one Lightning epoch on every rank. Lightning's resume at an
epoch boundary restarts the sampler's epoch wrongly; with no boundary inside a run there is
nothing to get wrong, on one process or many.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from capgap.data import token_cache
from capgap.data.blocks import PackedBlocks
from capgap.data.rank_share import EvenBatches, RankShare
from capgap.runtime import distributed
from capgap.runtime.errors import CapgapError

# torchdata 0.11 calls a torch API that newer torch deprecates, once per epoch: noise in every log
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class CorpusDataModule(L.LightningDataModule):
    def __init__(self, tokenizer, data_cfg, cache_dir: str | Path, batch_size: int = 16,
                 block_size: int = 128, num_workers: int = 0, seed: int = 0,
                 eval_batches: int | None = None, block_key: str = "block_size"):
        super().__init__()
        self.tokenizer, self.data_cfg = tokenizer, data_cfg
        self.cache_dir, self.batch_size, self.block_size = Path(cache_dir), batch_size, block_size
        self.num_workers, self.seed, self.eval_batches = num_workers, seed, eval_batches
        self.block_key = block_key  # the config key that set block_size, named in errors
        self.tokenized = False  # whether this module had to tokenize (tests check the cache)
        self.folder: Path | None = None
        # a transfer set chosen after setup (capgap.data.transfer); Lightning calls setup again
        # at fit, which must not bring the plain corpus blocks back
        self.train_override = None
        self.train_steps: int | None = None  # batches one fit draws (training.fit sets it)
        # every rank evaluates as many batches (a short rank topped up with blank ones): a
        # sharded model gathers its weights in every forward, so no rank may skip one
        # (training.fit sets it under sharding)
        self.even_batches = False

    # No prepare_data: Lightning calls it on local rank 0s only, inside a barrier of every rank
    # of the process group, which rank 0 pretraining a micro teacher on its own cannot pass.
    # Lightning calls setup on every rank of the Trainer, and this is where the corpus is
    # tokenized: by rank 0 first, the other ranks then read its cache entry.
    def setup(self, stage: str | None = None):
        # Lightning calls setup at every fit and validate of a job: the entry the first call
        # found serves them all, and checking it again would hash every file of it anew
        if self.folder is None:
            with distributed.current().zero_first():
                self.folder, self.tokenized = token_cache.build(self.tokenizer, self.data_cfg, self.cache_dir)
        self.meta, self.streams = token_cache.load(self.folder)
        if self.meta["vocab_size"] > len(self.tokenizer):
            raise CapgapError(f"token cache {self.folder} was built with a bigger vocabulary")
        for split, stream in self.streams.items():
            if self.block_size > len(stream):
                raise CapgapError(
                    f"{self.block_key}={self.block_size} is longer than the {split} split of the "
                    f"corpus ({len(stream)} tokens); lower it or give more text")
        eos = self.meta["eos_token_id"]
        self.train_set = PackedBlocks(self.streams["train"], self.block_size, eos)
        if self.train_override is not None:
            self.train_set = self.train_override
        self.val_set = PackedBlocks(self.streams["val"], self.block_size, eos)

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size

    def _ranks(self) -> tuple[int, int]:
        # a Trainer's ranks while one is attached; a loader used outside one sees every batch
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        # without train_steps (a length query, scoring): one shuffle of the blocks
        samples = self.train_steps * self.batch_size if self.train_steps else len(self.train_set)
        sampler = RankShare(len(self.train_set), self.batch_size, *self._ranks(), shuffle=True,
                            num_samples=samples, seed=self.seed)
        # the loader's own generator seeds workers; without one it would draw from the global RNG
        return StatefulDataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                                  drop_last=True, num_workers=self.num_workers,
                                  generator=torch.Generator().manual_seed(self.seed),
                                  persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        val = self.val_set
        if self.eval_batches:
            # a fixed prefix of the validation blocks keeps periodic evaluation cheap and comparable
            n = min(len(val), self.eval_batches * self.batch_size)
            val = torch.utils.data.Subset(val, range(n))
        # a generator of its own: a periodic evaluation must not move the global RNG that
        # dropout reads, or a run resumed past one would diverge from an uninterrupted run
        rank, world = self._ranks()
        loader = DataLoader(val, batch_size=self.batch_size, num_workers=self.num_workers,
                            sampler=RankShare(len(val), self.batch_size, rank, world),
                            generator=torch.Generator().manual_seed(self.seed))
        if world > 1 and self.even_batches:
            # rank 0 has the most batches: ⌈batches / world⌉
            return EvenBatches(loader, math.ceil(math.ceil(len(val) / self.batch_size) / world))
        return loader

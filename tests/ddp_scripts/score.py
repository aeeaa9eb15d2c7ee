"""Expressiveness scores of a fixed tiny model on 8 fixed blocks through PrunerModule, with
`devices` CPU processes (DDP, gloo); rank 0 saves them. Run as a script: Lightning's DDP
launcher starts the other ranks by running this file again."""

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from conftest import tiny_gpt_neox  # noqa: E402

from capgap.prune.pruner_module import PrunerModule  # noqa: E402

devices, out = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
torch.manual_seed(0)
model = tiny_gpt_neox()
blocks = torch.randint(0, 96, (8, 24), generator=torch.Generator().manual_seed(1))
data = [{"input_ids": b, "labels": b.clone()} for b in blocks]
per_rank = len(data) // devices  # the 8 blocks shared out: rank r gets r, r + devices, ...
module = PrunerModule(model, n_batches=per_rank)
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                    max_epochs=1, limit_train_batches=per_rank, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=1, shuffle=False))
if trainer.is_global_zero:
    torch.save(module.scores.raw, out)

"""Shared bits of the pruning tests."""

import torch

from capgap.data.blocks import IGNORE


def batches(n, b=2, t=16, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t), generator=g)
        labels = ids.clone()
        labels[0, :3] = IGNORE  # as a DataModule yields: ignored positions
        out.append({"input_ids": ids, "labels": labels})
    return out


def logits(model, x):
    with torch.no_grad():
        return model(x).logits

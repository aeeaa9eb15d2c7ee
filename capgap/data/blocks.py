"""Fixed-length blocks over a flat token stream."""

import math

import numpy as np
import torch
from torch.utils.data import Dataset

# the label no loss counts (torch's and HF's ignore_index): padding, unselected sequences
IGNORE = -100


class PackedBlocks(Dataset):
    """Consecutive, non-overlapping blocks; the last partial block is padded with EOS and its
    padding is labelled IGNORE, so every token of the stream is in exactly one block."""

    def __init__(self, stream: np.ndarray, block_size: int, pad_id: int):
        self.stream, self.block_size, self.pad_id = stream, block_size, pad_id

    def __len__(self) -> int:
        return math.ceil(len(self.stream) / self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        chunk = torch.from_numpy(self.stream[i * self.block_size:(i + 1) * self.block_size].astype(np.int64))
        labels = chunk.clone()
        if len(chunk) < self.block_size:
            pad = self.block_size - len(chunk)
            chunk = torch.cat([chunk, torch.full((pad,), self.pad_id, dtype=torch.long)])
            labels = torch.cat([labels, torch.full((pad,), IGNORE, dtype=torch.long)])
        return {"input_ids": chunk, "labels": labels}


def unigram_entropy(stream: np.ndarray) -> float:
    """Entropy (nats/token) of the stream's own token frequencies: the loss of the best model
    that ignores context, even one that knew the split's frequencies in advance."""
    counts = np.bincount(np.asarray(stream, dtype=np.int64))
    p = counts[counts > 0] / len(stream)
    return float(-(p * np.log(p)).sum())

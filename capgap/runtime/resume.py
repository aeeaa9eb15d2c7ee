"""What makes a killed run resume exactly: the RNG states go into the checkpoint, checkpoints
are written atomically, and one job at a time owns a checkpoint folder.

The data order resumes through the stateful train loader (capgap.data.datamodule); the
weights, optimizer, scheduler and loop counters through Lightning's own checkpoint.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback

from capgap.runtime.atomic import atomic_file
from capgap.runtime.errors import CapgapError


class RNGState(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) RNG states with each checkpoint and
    restores them when a run resumes; Lightning saves none of them. Restored at train start,
    after setup and configure_optimizers (which may draw, e.g. to initialise a projection),
    as an uninterrupted run had drawn those before its checkpoint too."""

    def __init__(self):
        self.pending = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only: Lightning loads checkpoints with weights_only=True
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer, pl_module):
        if self.pending is None:
            return
        s, self.pending = self.pending, None
        random.setstate(s["python"])
        kind, keys, pos, has_gauss, gauss = s["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their path and renamed over it (capgap.runtime.atomic): a job killed
    while saving leaves the previous last.ckpt whole. Lightning's own save goes through a temp
    file in $TMPDIR, which on a cluster is often another filesystem (then a copy, not a rename)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or "file" not in get_filesystem(path).protocol:
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


@contextmanager
def claim(ckpt_dir: str | Path, owner: bool = True):
    """Hold the lock of a checkpoint folder for a run's duration: a second job of the same
    config stops with one line instead of sharing the folder (the OS frees the lock of a
    killed job, so its rerun is never blocked). Only the job's `owner` (its global rank 0)
    claims; its other ranks use the folder rank 0 holds."""
    ckpt_dir = Path(ckpt_dir)
    if not owner:
        yield ckpt_dir
        return
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # inside the folder, so the run's deletion of the folder takes the lock file with it
    lock = FileLock(ckpt_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CapgapError(f"another job is running this same config now (it holds {ckpt_dir}); "
                          "two jobs never share one checkpoint folder, so this one stops") from None
    try:
        yield ckpt_dir
    finally:
        lock.release()
        # a run that stopped before its first checkpoint (bad input) leaves no folder behind:
        # rmdir removes only empty folders, so a checkpoint or another job's files keep it
        if ckpt_dir.is_dir() and [f.name for f in ckpt_dir.iterdir()] == [".lock"]:
            (ckpt_dir / ".lock").unlink(missing_ok=True)
            for folder in (ckpt_dir, ckpt_dir.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break

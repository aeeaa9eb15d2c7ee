"""DDP inside a Hydra job, a multirun's included.

Lightning's DDP launcher starts ranks 1..N-1 by running the script's command again
(`sys.argv`, plus `hydra.run.dir=<HydraConfig run.dir>`). In a multirun that command holds
`-m` and the sweep lists, so every rank would run the whole sweep. While a job runs, the
command is made this job's own: its overrides, `hydra.mode=RUN`, and its output folder as
run dir; the children then run exactly this job, and reach the same Trainer calls as rank 0.
Children start at rank 0's first `trainer.fit`, so whatever rank 0 did before (tokenizing,
scores, generated transfer sets) is already cached when they look: rank 0 alone writes it.
After the job the process group and the launcher's variables are cleared, so the next job
of the sweep launches its own children.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch.distributed as dist

LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, before or after a Trainer set up DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


@contextmanager
def one_job_per_rank():
    """Run one Hydra job so that Lightning's DDP children run this job and only this one."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, read_write

    # a child (or a job under torchrun/SLURM) was started for this job already, or no Hydra
    # job runs (a config composed in-process, whose Hydra node has no runtime): nothing to do
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is None or "LOCAL_RANK" in os.environ or OmegaConf.select(hc, "runtime.output_dir") is None:
        yield
        return
    argv, run_dir = sys.argv, hc.run.dir
    sys.argv = [argv[0], *hc.overrides.task, "hydra.mode=RUN"]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc):
            hc.run.dir = run_dir
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in LAUNCHER_ENV:
            os.environ.pop(key, None)

"""`task=` picks what one job does. Each task module has `run(cfg, run_dir) -> dict` of
plain floats/strings; `objective` (lower is better) is what Hydra gets back."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from capgap.runtime import distributed
from capgap.runtime.atomic import write_json_atomic
from capgap.runtime.budget import apply_global_batch
from capgap.runtime.schema import typed
from capgap.runtime.training import check_sharded_distill, check_trainer

TASKS = {
    "pretrain": "capgap.tasks.pretrain",
    "evaluate": "capgap.tasks.evaluate",
    "prune": "capgap.tasks.prune",
    "distill": "capgap.tasks.distill",
    "study": "capgap.tasks.study",
}


def run_task(cfg) -> dict:
    # every key known, every value of its type, sizes parsed: a mistake fails here, before
    # anything is written (run.py checked the command line before Hydra started)
    typed(cfg)
    check_trainer(cfg.trainer)  # before anything is written
    if cfg.task in ("distill", "study"):
        d = cfg.distill  # a global batch the devices cannot split fails here, not after a teacher loaded
        apply_global_batch(cfg.trainer, d.batch_size, d.block_size, d.get("global_batch_tokens"))
        check_sharded_distill(cfg.trainer, d)
    module = importlib.import_module(TASKS[cfg.task])
    run_dir = Path(cfg.paths.run_dir)
    try:
        # every rank runs the whole job in the same run dir: rank 0 alone writes into it
        with distributed.job(cfg) as job:
            if job.is_zero:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            metrics = module.run(cfg, run_dir)
            if job.is_zero:
                write_json_atomic(run_dir / "metrics.json", metrics)
        return metrics
    finally:
        # in a multirun every job runs in this one process: free its models before the next
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

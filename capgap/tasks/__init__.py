"""`task=` picks what one job does. Each task module has `run(cfg, run_dir) -> dict` of
plain floats/strings; `objective` (lower is better) is what Hydra gets back."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from capgap.atomic import write_json_atomic
from capgap.errors import CapgapError

TASKS = {
    "pretrain": "capgap.tasks.pretrain",
    "evaluate": "capgap.tasks.evaluate",
    "prune": "capgap.tasks.prune",
    "distill": "capgap.tasks.distill",
    "study": "capgap.tasks.study",
}


def run_task(cfg) -> dict:
    if cfg.task not in TASKS:
        raise CapgapError(f"task={cfg.task} is not one of: {', '.join(TASKS)}")
    module = importlib.import_module(TASKS[cfg.task])
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        metrics = module.run(cfg, run_dir)
        write_json_atomic(run_dir / "metrics.json", metrics)
        return metrics
    finally:
        # in a multirun every job runs in this one process: free its models before the next
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

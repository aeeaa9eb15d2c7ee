"""Make the student a task distills: pruned from the teacher, scratch, or a checkpoint.

Data flows one way: teacher → scores (cached) → plan → sliced student.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from capgap.data.datamodule import CorpusDataModule
from capgap.data.token_cache import cache_key
from capgap.models import teacher_name
from capgap.models.identity import teacher_id
from capgap.models.params import count_params
from capgap.models.scratch import scratch_model
from capgap.prune.planner import make_plan
from capgap.prune.pruner_module import PrunerModule
from capgap.prune.scores import baseline_scores, block_influence, cache_path, cached_scores
from capgap.prune.slicing import load_pruned, slice_model
from capgap.runtime import distributed
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import parse_size
from capgap.runtime.terminal import announce
from capgap.runtime.training import build_trainer


@dataclass(frozen=True)
class Scoring:
    """What making a student reads besides the student and prune settings: the teacher's
    corpus and where its cache lives, the trainer that runs the teacher, the seed, and the
    teacher's names (`key` for cache entries, models.identity.teacher_id; `label` for errors,
    models.teacher_name). A chain replaces the teacher's names with each assistant's."""
    data: Any
    cache_dir: str
    trainer: Any
    seed: int
    key: str
    label: str

    @classmethod
    def of(cls, cfg, tokenizer) -> "Scoring":
        """The one place the job's whole config is read (by the tasks that make students)."""
        return cls(data=cfg.data, cache_dir=str(cfg.paths.cache_dir), trainer=cfg.trainer, seed=cfg.seed,
                   key=teacher_id(cfg.teacher, cfg.pretrain, cfg.paths.cache_dir, tokenizer),
                   label=teacher_name(cfg.teacher))


def target_size(size, teacher, label: str) -> int | None:
    """student.size as a parameter count, checked against `teacher` (named `label` in the
    error); None means by sparsity."""
    if size in (None, ""):
        return None
    n = parse_size(size)
    teacher_size = count_params(teacher)["total"]
    if n >= teacher_size:
        raise CapgapError(f"student.size={size} is not below the teacher's "
                          f"{teacher_size:,} parameters (teacher={label})")
    return n


def scoring_data(p, tokenizer, how: Scoring) -> CorpusDataModule:
    dm = CorpusDataModule(tokenizer, how.data, how.cache_dir, batch_size=p.batch_size,
                          block_size=p.block_size, seed=how.seed)
    dm.setup()
    return dm


def scores_for(p, teacher, tokenizer, how: Scoring):
    """Scores of the `prune` settings `p`: expressiveness through PrunerModule (cached per
    teacher, data and N); the baselines need no data.

    PrunerModule is the one way expressiveness scores are made: the Trainer already places
    the teacher on the device, runs it in the configured precision and under DDP across
    ranks, and shows a progress bar; a plain loop would redo each of those."""
    if p.method != "expressiveness":
        return baseline_scores(teacher, p.method, how.seed)
    if p.n_batches < 1:
        raise CapgapError(f"prune.n_batches={p.n_batches} must be at least 1")
    data_id = f"{cache_key(tokenizer, how.data)}:b{p.batch_size}x{p.block_size}:s{how.seed}"
    path = cache_path(how.key, data_id, p.n_batches, method="expressiveness", root=how.cache_dir)
    return cached_scores(path, lambda: _score(p, teacher, tokenizer, how))


def _score(p, teacher, tokenizer, how: Scoring):
    loader = scoring_data(p, tokenizer, how).train_dataloader()  # no Trainer yet: the whole stream
    if len(loader) < p.n_batches:
        raise CapgapError(f"prune.n_batches={p.n_batches} is more than the corpus gives "
                          f"({len(loader)} batches of {p.batch_size}x{p.block_size})")
    announce("scoring", f"expressiveness E|dL/dmask| of the teacher on {p.n_batches} batches")
    # the N batches one process would score, shared out: rank r takes r, r + world, ... and
    # pads to the ranks' common count with weight-0 batches (DDP steps in lockstep), so the
    # summed scores and their cache entry do not depend on the number of devices
    job = distributed.current()
    batches = list(itertools.islice(loader, p.n_batches))
    per_rank = math.ceil(p.n_batches / job.world_size)
    mine = [dict(b, weight=1.0) for b in batches[job.rank::job.world_size]]
    mine += [dict(batches[0], weight=0.0)] * (per_rank - len(mine))
    module = PrunerModule(teacher, n_batches=per_rank)  # the cache entry saves them, not the module
    # no weight moves, so nothing to clip, accumulate, checkpoint or validate; the teacher
    # stays on the device for the passes that follow
    trainer = build_trainer(how.trainer, max_epochs=1, limit_train_batches=per_rank, logger=False,
                            enable_checkpointing=False, gradient_clip_val=None, limit_val_batches=0,
                            accumulate_grad_batches=1)
    trainer.fit(module, train_dataloaders=DataLoader(mine, batch_size=None))
    return module.scores


def pruned(p, size, teacher, tokenizer, how: Scoring):
    """The teacher pruned by the `prune` settings `p` to `size` (student.size), or to
    p.sparsity when no size is set: (student, plan)."""
    size = target_size(size, teacher, how.label)
    scores = scores_for(p, teacher, tokenizer, how)
    influence = None
    if p.layer_drop == "block_influence":
        dm = scoring_data(p, tokenizer, how)
        influence = block_influence(teacher, dm.train_dataloader(), p.n_batches)
    announce("pruning", f"{p.method} plan to {f'{size:,} parameters' if size else f'sparsity {p.sparsity}'}")
    plan = make_plan(teacher, scores, sparsity=None if size else p.sparsity, size=size,
                     ranking=p.ranking, multiple=p.multiple, min_heads=p.min_heads,
                     min_neurons=p.min_neurons, max_head_sparsity=p.max_head_sparsity,
                     layer_drop=p.layer_drop, drop_layers=p.drop_layers, influence=influence)
    return slice_model(teacher, plan), plan


def make_student(student_cfg, prune_cfg, teacher, tokenizer, how: Scoring) -> tuple[torch.nn.Module, dict]:
    """(student, info) by the `student` settings: info has the plan (pruned students) and the
    student's sizes."""
    init = student_cfg.init
    plan = None
    if init == "pruned":
        student, plan = pruned(prune_cfg, student_cfg.get("size"), teacher, tokenizer, how)
    elif init == "scratch":
        size = target_size(student_cfg.get("size"), teacher, how.label) or int(
            count_params(teacher)["total"] * (1 - prune_cfg.sparsity))
        student = scratch_model(teacher, student_cfg.get("arch"), size, how.seed)
    elif init == "path":
        path = Path(student_cfg.path)
        if not (path / "config.json").is_file():
            raise CapgapError(f"student.path={path} is not a checkpoint folder (no config.json)")
        student = load_pruned(path)
    else:
        raise CapgapError(f"student.init={init} is not one of pruned, scratch, path")
    return student, {"plan": plan, **size_info(student, teacher)}


def size_info(student, teacher) -> dict:
    """The student's sizes and its sparsity against `teacher`."""
    n, t = count_params(student), count_params(teacher)
    return {"student_params": n["total"], "student_non_embedding": n["non_embedding"],
            "teacher_params": t["total"], "teacher_non_embedding": t["non_embedding"],
            # the paper's sparsity is over the layers (p' = 1 - sqrt(1 - p) per component);
            # embeddings shrink only with the hidden size, so total sparsity is lower
            "sparsity": 1 - n["non_embedding"] / t["non_embedding"],
            "sparsity_total": 1 - n["total"] / t["total"]}

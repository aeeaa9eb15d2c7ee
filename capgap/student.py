"""Make the student a task distills: pruned from the teacher, scratch, or a checkpoint.

Data flows one way: teacher → scores (cached) → plan → sliced student.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import OmegaConf

from capgap.data.datamodule import CorpusDataModule
from capgap.data.token_cache import cache_key
from capgap.errors import CapgapError
from capgap.law.sizes import parse_size
from capgap.models import micro
from capgap.models.params import count_params
from capgap.models.zoo import build_from_config
from capgap.prune.masks import PLACEMENT
from capgap.prune.planner import make_plan
from capgap.prune.pruner_module import PrunerModule
from capgap.prune.scores import baseline_scores, block_influence, cache_path, load_scores
from capgap.prune.slicing import load_pruned, slice_model
from capgap.training import build_trainer


def teacher_id(cfg, tokenizer) -> str:
    """Names the teacher's weights, so cached scores never outlive a change of teacher."""
    t = cfg.teacher
    if t.get("path"):
        cfg_file = Path(t.path) / "config.json"
        return f"path:{Path(t.path).resolve()}:{cfg_file.stat().st_mtime_ns}"
    if t.source == "micro":
        return f"micro:{micro.cache_folder(t, cfg, tokenizer).name}"
    return f"{t.source}:{t.get('hub_id')}@{t.get('revision')}"


def target_size(cfg, teacher) -> int | None:
    """student.size as a parameter count, checked against the teacher; None means by sparsity."""
    if cfg.student.get("size") in (None, ""):
        return None
    size = parse_size(cfg.student.size)
    teacher_size = count_params(teacher)["total"]
    if size >= teacher_size:
        raise CapgapError(f"student.size={cfg.student.size} is not below the teacher's "
                          f"{teacher_size:,} parameters (teacher={cfg.teacher.name})")
    return size


def scoring_data(cfg, tokenizer) -> CorpusDataModule:
    p = cfg.prune
    dm = CorpusDataModule(tokenizer, cfg.data, cfg.paths.cache_dir, batch_size=p.batch_size,
                          block_size=p.block_size, seed=cfg.seed)
    dm.setup()
    return dm


def scores_for(cfg, teacher, tokenizer, teacher_key: str | None = None):
    """Expressiveness scores through PrunerModule (cached per teacher, data and N); the
    baselines need no data. `teacher_key` names a teacher that is not cfg.teacher (a chain's
    assistant), so its scores get their own cache entry.

    PrunerModule is the one way expressiveness scores are made: the Trainer already places
    the teacher on the device, runs it in the configured precision and under DDP across
    ranks, and shows a progress bar; a plain loop would redo each of those."""
    p = cfg.prune
    if p.method != "expressiveness":
        return baseline_scores(teacher, p.method, cfg.seed)
    if p.n_batches < 1:
        raise CapgapError(f"prune.n_batches={p.n_batches} must be at least 1")
    data_id = f"{cache_key(tokenizer, cfg.data)}:b{p.batch_size}x{p.block_size}:s{cfg.seed}"
    path = cache_path(teacher_key or teacher_id(cfg, tokenizer), data_id, p.n_batches,
                      method=f"expressiveness/{PLACEMENT}", root=cfg.paths.cache_dir)
    if path.is_file():
        return load_scores(path)
    dm = scoring_data(cfg, tokenizer)
    if len(dm.train_dataloader()) < p.n_batches:
        raise CapgapError(f"prune.n_batches={p.n_batches} is more than the corpus gives "
                          f"({len(dm.train_dataloader())} batches of {p.batch_size}x{p.block_size})")
    module = PrunerModule(teacher, n_batches=p.n_batches, cache_path=path)
    # no weight moves, so nothing to clip, checkpoint or validate
    trainer = build_trainer(cfg.trainer, max_epochs=1, limit_train_batches=p.n_batches, logger=False,
                            enable_checkpointing=False, gradient_clip_val=None, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    teacher.to("cpu")
    return module.scores


def pruned(cfg, teacher, tokenizer, teacher_key=None):
    p = cfg.prune
    size = target_size(cfg, teacher)
    scores = scores_for(cfg, teacher, tokenizer, teacher_key)
    influence = None
    if p.layer_drop == "block_influence":
        dm = scoring_data(cfg, tokenizer)
        influence = block_influence(teacher, dm.train_dataloader(), p.n_batches)
    plan = make_plan(teacher, scores, sparsity=None if size else p.sparsity, size=size,
                     ranking=p.ranking, multiple=p.multiple, min_heads=p.min_heads,
                     min_neurons=p.min_neurons, max_head_sparsity=p.max_head_sparsity,
                     layer_drop=p.layer_drop, drop_layers=p.drop_layers, influence=influence)
    return slice_model(teacher, plan), plan


def _width_and_heads(hidden: int, head_dim: int):
    """Widths in steps of 8 up to the teacher's, each with the head count whose head size is
    nearest the teacher's (whole heads only): finer than whole heads of the teacher's size,
    which on small models jump past the target by 20% or more."""
    for width in range(8, hidden + 1, 8):
        divisors = [h for h in range(1, width + 1) if width % h == 0]
        yield width, min(divisors, key=lambda h: abs(width / h - head_dim))


def scratch_config(teacher, arch: str, size: int) -> dict:
    """The teacher's depth, FFN ratio and about its head size, at the width whose total
    count lands nearest `size`."""
    c = teacher.config
    hidden, heads = c.hidden_size, c.num_attention_heads
    ffn_ratio = (getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden) / hidden
    same = arch == c.model_type
    best = None
    for width, h in _width_and_heads(hidden, hidden // heads):
        cfg = c.to_dict() if same else {
            "vocab_size": c.vocab_size, "num_hidden_layers": c.num_hidden_layers,
            "max_position_embeddings": getattr(c, "max_position_embeddings", None) or c.n_positions,
            "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
            "tie_word_embeddings": c.tie_word_embeddings}
        for k in ("model_type", "architectures", "transformers_version", "_name_or_path", "dtype"):
            cfg.pop(k, None)
        cfg.update(hidden_size=width, num_attention_heads=h, intermediate_size=int(round(ffn_ratio * width)))
        if "num_key_value_heads" in cfg or arch == "llama":
            cfg["num_key_value_heads"] = h
        if arch == "gpt2":
            cfg["n_inner"] = cfg["intermediate_size"]
        with torch.device("meta"):
            n = count_params(build_from_config(arch, cfg))["total"]
        if best is None or abs(n - size) < abs(best[0] - size):
            best = (n, cfg)
    return best[1]


def scratch(cfg, teacher):
    size = target_size(cfg, teacher) or int(count_params(teacher)["total"] * (1 - cfg.prune.sparsity))
    arch = cfg.student.get("arch") or teacher.config.model_type
    torch.manual_seed(cfg.seed)
    return build_from_config(arch, scratch_config(teacher, arch, size))


def make_student(cfg, teacher, tokenizer, teacher_key=None) -> tuple[torch.nn.Module, dict]:
    """(student, info): info has the plan (pruned students) and the student's sizes."""
    init = cfg.student.init
    plan = None
    if init == "pruned":
        student, plan = pruned(cfg, teacher, tokenizer, teacher_key)
    elif init == "scratch":
        student = scratch(cfg, teacher)
    elif init == "path":
        path = Path(cfg.student.path)
        if not (path / "config.json").is_file():
            raise CapgapError(f"student.path={path} is not a checkpoint folder (no config.json)")
        student = load_pruned(path)
    else:
        raise CapgapError(f"student.init={init} is not one of pruned, scratch, path")
    s_vocab = student.get_input_embeddings().weight.shape[0]
    t_vocab = teacher.get_input_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise CapgapError(f"student vocabulary ({s_vocab}) differs from teacher={cfg.teacher.name}'s "
                          f"({t_vocab}); distillation needs a shared tokenizer")
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


# what does not change a run's result: where it writes, how it is shown and stored
NOT_HASHED = ("paths", "hydra", "store", "logger", "trainer.enable_progress_bar",
              "trainer.enable_model_summary", "trainer.log_every_n_steps")


def config_hash(cfg) -> str:
    """Same experiment, same hash: what identifies a run for resume and for the store."""
    items = _flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = sorted((k, v) for k, v in items if not k.startswith(NOT_HASHED))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]


def _is_off(v) -> bool:
    return v is None or v is False or v == [] or v in ("", "none", "off") or (
        isinstance(v, (int, float)) and v == 0)


def _flatten(d, prefix=""):
    # keys at an "off" value are left out, so adding a new option (off by default) keeps the
    # hash of every earlier run: the store still recognises them and does not re-run them
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        elif not _is_off(v):
            yield f"{prefix}{k}", repr(v)

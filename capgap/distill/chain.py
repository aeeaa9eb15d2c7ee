"""Teacher-assistant chains: T → TA1 → … → S in one run (Mirzadeh et al. 2020).

Each assistant is pruned from the model before it (the same prune config, except that
assistants are pruned with uniform ranking: capgap's scores assume every layer has the same
width, so only a uniform model can be pruned again) and distilled from it on the run's token
budget (distill.tokens, or distill.tokens_per_param × that assistant's own parameters), then
becomes the next stage's teacher. The final student is made from the last assistant by
task=distill as usual.

`distill.chain`: explicit assistant sizes, largest first. `distill.assistants=auto`: sizes
S·k, S·k², … below T at the law's ratio k = T*/S, from a fit of the run's study in the store
when it has one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from capgap.distill.config import from_config
from capgap.law.studies import DEFAULT, config_hash
from capgap.models.params import count_params
from capgap.prune.student import Scoring, make_student, target_size
from capgap.runtime import training
from capgap.runtime.budget import token_budget
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size, parse_size
from capgap.runtime.terminal import announce, report

DEFAULT_RATIO = 2.5  # the paper's T* ≈ 2.5·S when no fit of our own exists


def law_ratio(store_url, student_size: int, study: str = DEFAULT) -> float:
    """k = T*/S at this student size from the fit of `study` in the store; DEFAULT_RATIO when
    it cannot be fitted yet (too few points) or the fit gives no teacher larger than the student."""
    from capgap.law.store import Store
    from capgap.law.study_fit import study_law

    try:
        law = study_law(Store(store_url), study, n_boot=1)
    except CapgapError:
        return DEFAULT_RATIO
    k = (law.a * student_size + law.b) / student_size
    return k if k > 1 else DEFAULT_RATIO


def assistant_sizes(d, teacher_params: int, student_params: int, ratio=None) -> list[int]:
    """Sizes of the assistants between teacher and student, largest first ([] for no chain).
    `ratio`: a callable giving k for auto (only called when assistants=auto)."""
    chain, auto = d.get("chain"), d.get("assistants")
    if chain and auto not in (None, "none", "off"):
        raise CapgapError("distill.chain and distill.assistants are both set: give one")
    if chain:
        sizes = [parse_size(s) for s in chain]
        if any(a <= b for a, b in zip(sizes, sizes[1:])):
            raise CapgapError(f"distill.chain={list(chain)} must be strictly decreasing (largest first)")
        if sizes[0] >= teacher_params or sizes[-1] <= student_params:
            raise CapgapError(f"distill.chain={list(chain)} must lie strictly between the student "
                              f"({format_size(student_params)}) and the teacher ({format_size(teacher_params)})")
        return sizes
    if auto in (None, "none", "off"):
        return []
    if auto != "auto":
        raise CapgapError(f"distill.assistants={auto} is not one of auto, null")
    k = float(ratio()) if ratio else DEFAULT_RATIO
    if k <= 1:
        raise CapgapError(f"distill.assistants=auto needs a ratio above 1, got {k}")
    sizes, n = [], student_params * k
    while n < teacher_params:
        sizes.append(int(n))
        n *= k
    return sizes[::-1]


def planned_sizes(cfg, teacher, how: Scoring) -> list[int]:
    """assistant_sizes for this config and loaded teacher."""
    d = cfg.distill
    if not d.get("chain") and d.get("assistants") in (None, "none", "off"):
        return []
    if cfg.student.init != "pruned":
        raise CapgapError(f"distill.chain/assistants prune each stage from the one before; "
                          f"student.init={cfg.student.init} (use student=pruned)")
    t = count_params(teacher)["total"]
    s = target_size(cfg.student.get("size"), teacher, how.label) or int(t * (1 - cfg.prune.sparsity))
    study = cfg.get("study") or DEFAULT
    return assistant_sizes(d, t, s, ratio=lambda: law_ratio(cfg.store.get("url"), s, study))


def run_chain(cfg, teacher, tokenizer, dm, run_dir: Path, ckpt_dir: Path, sizes: list[int], how: Scoring,
              log_every: int = 10):
    """Distill each assistant from the model before it. Returns (last assistant, the Scoring
    that names it, one dict per stage)."""
    d = cfg.distill
    per_step = training.tokens_per_step(cfg.trainer, dm.tokens_per_batch)
    current, current_how, stages = teacher, how, []
    # each assistant is pruned to its size with uniform widths (a chain's stages share a shape)
    stage_prune = OmegaConf.merge(cfg.prune, {"ranking": "uniform"})
    for i, size in enumerate(sizes, 1):
        stage_student = OmegaConf.merge(cfg.student, {"size": size})
        student, info = make_student(stage_student, stage_prune, current, tokenizer, current_how)
        steps = training.steps_for(token_budget(d, info["student_params"]), dm.tokens_per_batch, cfg.trainer)
        announce("distilling", f"assistant {i}/{len(sizes)}, {info['student_params']:,} parameters, "
                               f"on {steps * per_step:,} tokens")
        module = from_config(student, current, d, steps, log_every=log_every)
        trainer, res = training.fit(module, dm, cfg.trainer, cfg.get("logger"), Path(run_dir) / f"assistant{i}",
                                    Path(ckpt_dir) / f"assistant{i}", steps)
        dm.eval_batches = d.eval_batches  # fit's final evaluation switched to the whole split
        stages.append({"size": size, "params": info["student_params"], "teacher_params": info["teacher_params"],
                       "steps": int(trainer.global_step), "val_loss": res["val/loss"],
                       "teacher_val_loss": res.get("val/teacher_loss")})
        report(f"assistant {i}/{len(sizes)}: {info['student_params']:,} parameters, "
              f"held-out loss {res['val/loss']:.4f}")
        current = module.model
        # the assistant's weights depend on everything in the config: its scores are its own
        current_how = replace(how, key=f"{how.key}|chain:{config_hash(cfg)}:assistant{i}",
                              label=f"{how.label}'s assistant {i}")
    return current, current_how, stages

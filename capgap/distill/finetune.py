"""Post-distillation fine-tuning: a CE-only stage on the same data at a smaller learning rate.

The distilled student continues as a plain CausalLMModule, so no teacher forward runs in this
stage. It has its own checkpoint folder (resume works per stage) and its own log folder (the
distillation stage's CSV is not overwritten).
"""

from __future__ import annotations

from pathlib import Path

from capgap.distill.config import optim_settings
from capgap.pretrain.lm_module import CausalLMModule
from capgap.runtime import training
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import announce


def finetune_settings(d) -> tuple[int, float]:
    """(tokens, lr_scale) from distill.finetune; tokens 0 means no fine-tuning stage."""
    ft = d.get("finetune") or {}
    tokens, scale = int(ft.get("tokens", 0) or 0), float(ft.get("lr_scale", 0.1))
    if tokens < 0:
        raise CapgapError(f"distill.finetune.tokens={tokens} must be 0 (off) or positive")
    if not 0 < scale:
        raise CapgapError(f"distill.finetune.lr_scale={scale} must be positive")
    return tokens, scale


def finetune(model, dm, d, trainer_cfg, logger_cfg, run_dir: Path, ckpt_dir: Path, tokens: int,
             lr_scale: float, log_every: int = 10, extra_callbacks=()):
    """Train `model` with CE only for `tokens` tokens at distill.lr·lr_scale; (trainer, metrics)."""
    steps = training.steps_for(tokens, dm.tokens_per_batch, trainer_cfg)
    per_step = training.tokens_per_step(trainer_cfg, dm.tokens_per_batch)
    announce("fine-tuning", f"CE only on {steps * per_step:,} tokens at lr {d.lr * lr_scale:g}")
    optim = {**optim_settings(d), "lr": d.lr * lr_scale}
    module = CausalLMModule(model, total_steps=steps, log_every=log_every, **optim)
    # the distillation fit's final evaluation switched to the whole split; periodic ones use a prefix
    dm.eval_batches = d.eval_batches
    return training.fit(module, dm, trainer_cfg, logger_cfg, Path(run_dir) / "finetune",
                        Path(ckpt_dir) / "finetune", steps,
                        extra_callbacks=extra_callbacks)

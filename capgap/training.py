"""Build a Lightning Trainer from config, fit with resume, and evaluate once at the end."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from capgap.resume import AtomicCheckpointIO, RNGState


def resolve_precision(precision) -> str:
    """`auto`: bf16 mixed precision on GPUs that have it, full fp32 elsewhere."""
    if precision not in (None, "auto"):
        return str(precision)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def steps_for(tokens: int, tokens_per_batch: int) -> int:
    return max(1, math.ceil(tokens / tokens_per_batch))


def build_trainer(trainer_cfg, **overrides) -> L.Trainer:
    """A Trainer from conf/trainer with capgap's own keys taken out and precision resolved."""
    kwargs = {k: v for k, v in trainer_cfg.items() if k != "checkpoint_every"}
    kwargs.update(overrides)
    kwargs["precision"] = resolve_precision(kwargs.get("precision"))
    return instantiate(kwargs)


def fit(module, datamodule, trainer_cfg, logger_cfg, run_dir: Path, ckpt_dir: Path,
        max_steps: int, extra_callbacks=()) -> tuple[L.Trainer, dict]:
    """Train to `max_steps`, resuming from `ckpt_dir/last.ckpt` when an earlier run of the same
    config was interrupted, then evaluate on the whole validation split.

    Returns the trainer and the final validation metrics as floats.
    """
    ckpt_dir = Path(ckpt_dir)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=trainer_cfg.get("checkpoint_every", 200))
    logger = instantiate(logger_cfg, save_dir=str(run_dir)) if logger_cfg else False
    # the loader yields exactly max_steps batches: one epoch, so a resume never meets an epoch end
    datamodule.train_steps = max_steps
    # Lightning refuses an interval longer than an epoch; short runs still evaluate at their end
    batches = len(datamodule.train_dataloader())
    interval = min(trainer_cfg.get("val_check_interval") or batches, batches, max_steps)
    trainer = build_trainer(trainer_cfg, max_steps=max_steps, max_epochs=-1, val_check_interval=interval,
                            logger=logger, callbacks=[checkpoint, RNGState(), *extra_callbacks],
                            plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    # the periodic evaluation sees a fixed prefix; the final figure uses every validation block
    datamodule.eval_batches = None
    results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return trainer, {k: float(v) for k, v in results.items()}


def evaluate(model, datamodule, trainer_cfg) -> dict:
    """Held-out loss and perplexity of `model` over the datamodule's validation blocks."""
    from capgap.lm_module import CausalLMModule  # the loop module imports nothing of ours back

    trainer = build_trainer(trainer_cfg, logger=False, enable_checkpointing=False)
    res = trainer.validate(CausalLMModule(model), datamodule=datamodule, verbose=False)[0]
    return {"val_loss": float(res["val/loss"]), "val_ppl": float(res["val/ppl"])}

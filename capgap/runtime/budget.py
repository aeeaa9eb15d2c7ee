"""Budgets in global tokens: one optimizer step trains micro-batch × block × devices × nodes ×
accumulation tokens, and steps are counted from that, so adding GPUs or accumulation never
changes how many tokens a run trains (only how fast). Plain arithmetic on the trainer config:
`capgap plan` uses it without importing Lightning.
"""

from __future__ import annotations

import math
import os

from omegaconf import open_dict

from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import parse_size


def _cuda_count() -> int:
    import torch  # only where devices are left to the machine ("auto", -1)

    return torch.cuda.device_count()


def uses_cuda(trainer_cfg) -> bool:
    acc = str(trainer_cfg.get("accelerator", "auto"))
    return acc in ("gpu", "cuda") or (acc == "auto" and _cuda_count() > 0)


def devices_per_node(trainer_cfg) -> int:
    d = trainer_cfg.get("devices", 1)
    if d in (None, "auto"):
        return (_cuda_count() or 1) if uses_cuda(trainer_cfg) else 1
    if isinstance(d, str) and "," in d:
        return len([x for x in d.split(",") if x.strip()])
    if not isinstance(d, (int, str)):
        return len(list(d))  # a list of device indices
    d = int(d)
    if d == -1:
        return _cuda_count() if uses_cuda(trainer_cfg) else os.cpu_count()
    return d


def world_size(trainer_cfg) -> int:
    return devices_per_node(trainer_cfg) * int(trainer_cfg.get("num_nodes", 1) or 1)


def apply_global_batch(trainer_cfg, batch_size: int, block_size: int, global_batch_tokens,
                       key: str = "distill.global_batch_tokens") -> None:
    """Set trainer.accumulate_grad_batches so that one optimizer step trains
    `global_batch_tokens` tokens over all devices (null: keep the trainer's own)."""
    if global_batch_tokens in (None, 0):
        return
    per_pass = batch_size * block_size * world_size(trainer_cfg)
    accum, rest = divmod(int(global_batch_tokens), per_pass)
    if rest or accum < 1:
        raise CapgapError(
            f"{key}={int(global_batch_tokens):,} is not a multiple of micro-batch × block × devices = "
            f"{batch_size} × {block_size} × {world_size(trainer_cfg)} = {per_pass:,} tokens")
    with open_dict(trainer_cfg):
        trainer_cfg.accumulate_grad_batches = accum


def tokens_per_step(trainer_cfg, tokens_per_batch: int) -> int:
    """Tokens of one optimizer step: a micro-batch's on every device, times accumulation."""
    accum = int(trainer_cfg.get("accumulate_grad_batches", 1) or 1) if trainer_cfg is not None else 1
    world = world_size(trainer_cfg) if trainer_cfg is not None else 1
    return tokens_per_batch * world * accum


def steps_for(tokens: int, tokens_per_batch: int, trainer_cfg=None) -> int:
    """Optimizer steps to train `tokens` tokens over all devices; `tokens_per_batch` is one
    micro-batch of one device (without `trainer_cfg`: one device, no accumulation)."""
    return max(1, math.ceil(tokens / tokens_per_step(trainer_cfg, tokens_per_batch)))




def token_budget(d, student_params: int | None) -> int | None:
    """Global tokens to distill on: distill.tokens when set (300000 or "20M"), else
    distill.tokens_per_param × the student's parameters (the study presets: a budget that
    grows with the student). None when it depends on a student size not known yet."""
    if d.get("tokens") not in (None, 0):
        try:
            return parse_size(d.tokens)
        except CapgapError as e:
            raise CapgapError(f"distill.tokens={d.tokens}: {e}") from None
    k = d.get("tokens_per_param")
    if k in (None, 0):
        raise CapgapError("distill.tokens is null and distill.tokens_per_param is not set: set one of them")
    try:
        k = float(k)
    except (TypeError, ValueError):
        k = math.nan
    if not math.isfinite(k) or k <= 0:
        raise CapgapError(f"distill.tokens_per_param={d.tokens_per_param} must be a positive number")
    return None if student_params is None else int(round(k * student_params))

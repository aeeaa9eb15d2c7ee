"""Callbacks tests/test_fsdp.py injects into a `python run.py trainer=fsdp` job from the config
(`+trainer.callbacks=[{_target_: fsdp_probe.Probe, ...}]`; this folder is on the job's PYTHONPATH).

Probe writes, per rank, what the job's processes saw: how the student and the teacher are
sharded, the gradient norm before and after clipping at each step, and whether the final
validation ran on the student sharded by the fit. StopOnce ends every rank hard (no cleanup,
as a killed job) at a given step while its flag file exists, so the rerun of the same config
(the callbacks are in the config hash) resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def _norm(grads) -> float:
    norm = torch.nn.utils.get_total_norm(grads)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class Probe(Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.seen: dict = {"pre_clip": [], "post_clip": [], "stages": []}

    def _grads(self, pl_module):
        return [p.grad for p in pl_module.model.parameters() if p.grad is not None]

    def _layout(self, trainer, pl_module) -> dict:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        student, teacher = pl_module.model, pl_module.teacher
        params = dict(student.named_parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params.values())
        return {"strategy": type(trainer.strategy).__name__, "world": trainer.world_size,
                "student_fsdp_root": isinstance(student, FSDPModule),
                "student_fsdp_units": sum(isinstance(m, FSDPModule) for m in student.modules()),
                "student_all_dtensor": all(isinstance(p, DTensor) for p in params.values()),
                "student_numel": sum(p.numel() for p in params.values()), "student_local_numel": local,
                # learned projections of intermediate terms (distill=hidden on a narrower student)
                "terms_numel": sum(p.numel() for p in pl_module.terms.parameters()),
                "terms_all_dtensor": all(isinstance(p, DTensor) for p in pl_module.terms.parameters()),
                "teacher_fsdp_units": sum(isinstance(m, FSDPModule) for m in teacher.modules()),
                "teacher_layers_dtensor": any(isinstance(p, DTensor) for p in teacher.base_model.parameters()),
                "teacher_head_whole": not isinstance(teacher.get_output_embeddings().weight, DTensor)}

    def on_train_start(self, trainer, pl_module):
        self.seen["stages"].append(("fit", self._layout(trainer, pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen["pre_clip"].append(_norm(self._grads(pl_module)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the step's gradients as the optimizer used them, clipped (zeroed only at the next step)
        self.seen["post_clip"].append(_norm(self._grads(pl_module)))

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "validate":  # the final trainer.validate after fit
            self.seen["stages"].append(("validate", self._layout(trainer, pl_module)))

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


class StopOnce(Callback):
    def __init__(self, at_step: int, flag: str):
        self.at_step, self.flag = at_step, Path(flag)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step and self.flag.is_file():
            os._exit(3)  # every rank reaches the same step: the job dies as a killed one would

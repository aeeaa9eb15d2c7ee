"""CausalLMModule's logged figures under a real Trainer step."""

import lightning as L
import pytest
import torch
from conftest import VOCAB, tiny_gpt_neox
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from capgap.pretrain.lm_module import CausalLMModule


class Capture(Logger):
    name, version = "capture", 0

    def __init__(self):
        super().__init__()
        self.metrics = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_hyperparams(self, *a, **k):
        pass


class GradsAtStep(L.Callback):
    """The gradients as the module's own on_before_optimizer_step sees them (callbacks run first)."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.norm = float(torch.cat([p.grad.flatten() for p in module.model.parameters()
                                     if p.grad is not None]).norm())


def test_logged_grad_norm_is_the_two_norm_of_all_gradients():
    torch.manual_seed(0)
    module = CausalLMModule(tiny_gpt_neox(), total_steps=1, log_every=1)
    ids = torch.randint(0, VOCAB, (1, 2, 16), generator=torch.Generator().manual_seed(0))
    logger, grads = Capture(), GradsAtStep()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=logger, log_every_n_steps=1, callbacks=[grads],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader([{"input_ids": x, "labels": x.clone()} for x in ids], batch_size=None))
    assert grads.norm > 0
    assert logger.metrics["train/grad_norm"] == pytest.approx(grads.norm, rel=1e-5)

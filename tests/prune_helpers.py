"""Shared bits of the pruning tests: data, scoring through PrunerModule, and masks set from a
plan (how masked ≡ sliced is checked; production only ever scores at masks = 1)."""

from contextlib import contextmanager

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from capgap.data.blocks import IGNORE
from capgap.models.adapters import adapter_for
from capgap.prune.masks import Masks, applied
from capgap.prune.pruner_module import PrunerModule


def batches(n, b=2, t=16, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t), generator=g)
        labels = ids.clone()
        labels[0, :3] = IGNORE  # as a DataModule yields: ignored positions
        out.append({"input_ids": ids, "labels": labels})
    return out


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def score(model, data, n_batches):
    """Expressiveness scores the way capgap makes them: PrunerModule under a Trainer."""
    module = PrunerModule(model, n_batches=n_batches)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=n_batches, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=None))
    return module.scores


def plan_masks(adapter, plan) -> Masks:
    """Ones on what the plan keeps, zeros elsewhere (layer dropping is not maskable)."""
    assert len(plan.layers) == len(adapter.layers()), "masks cannot express dropped layers"
    m = Masks(adapter)
    with torch.no_grad():
        for t in m.tensors():
            t.zero_()
        m.hidden[plan.hidden] = 1
        for i, (heads, neurons) in enumerate(zip(plan.heads, plan.neurons)):
            m.heads[i, heads] = 1
            m.neurons[i, neurons] = 1
    return m


def exact_norm(module, x, kept):
    """The norm's own formula over the kept hidden dims only (its statistics too)."""
    if isinstance(module, torch.nn.LayerNorm):
        bias = module.bias[kept] if module.bias is not None else None
        return F.layer_norm(x, (len(kept),), module.weight[kept], bias, module.eps)
    # LlamaRMSNorm's arithmetic: fp32 statistics
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    return module.weight[kept] * h.to(x.dtype)


@contextmanager
def masked(model, plan):
    """The model with the plan's masks applied: equal to the sliced student.

    μ zeroes the pruned dims of the residual stream, but a norm over all D dims would still
    divide by D (and LayerNorm would subtract a mean that counts the zeros), while the sliced
    student's norms see only the kept dims; so each norm is recomputed over the kept dims, as
    MiniMA's SparseLlamaRMSNorm does when given a hidden mask.
    """
    a = adapter_for(model)
    kept = torch.as_tensor(plan.hidden)

    def norm_hook(module, args, out):
        y = out.new_zeros(out.shape)
        y[..., kept] = exact_norm(module, args[0][..., kept], kept)
        return y

    handles = [norm.register_forward_hook(norm_hook) for norm in a.norms()]
    try:
        with applied(plan_masks(a, plan), a):
            yield
    finally:
        for h in handles:
            h.remove()

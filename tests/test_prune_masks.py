"""Masked model == sliced model; masks at one == the original model, bit for bit."""

import pytest
import torch
from prune_helpers import logits, masked

from capgap.models.adapters import adapter_for
from capgap.prune.masks import Masks, applied
from capgap.prune.planner import make_plan
from capgap.prune.scores import random_scores
from capgap.prune.slicing import slice_model

X = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))


def test_masks_at_one_change_nothing(tiny_model):
    a = adapter_for(tiny_model)
    with applied(Masks(a), a):
        out = logits(tiny_model, X)
    assert torch.equal(out, logits(tiny_model, X))


@pytest.mark.parametrize("ranking", ["global", "uniform"])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.75])
def test_masked_equals_sliced(tiny_model, ranking, sparsity):
    a = adapter_for(tiny_model)
    plan = make_plan(tiny_model, random_scores(tiny_model, seed=3), sparsity=sparsity, ranking=ranking)
    with masked(tiny_model, plan):
        cut = logits(tiny_model, X)
    student = slice_model(tiny_model, plan)
    assert (cut - logits(student, X)).abs().max() <= 1e-4
    assert not torch.allclose(cut, logits(tiny_model, X))  # the cut did something
    # really smaller tensors, and the teacher untouched
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in tiny_model.parameters())
    assert tiny_model.config.hidden_size == a.hidden


def test_hidden_masking_respects_layernorm_statistics(tiny_model):
    """Only hidden dims cut: the case where a norm over all dims would differ."""
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.0)
    plan.hidden = plan.hidden[::2]
    with masked(tiny_model, plan):
        cut = logits(tiny_model, X)
    assert (cut - logits(slice_model(tiny_model, plan), X)).abs().max() <= 1e-4


def test_dropped_layers_equal_identity_layers(tiny_model):
    a = adapter_for(tiny_model)
    # one of two layers dropped is already half the layer parameters: sparsity 0.5 keeps full widths
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.5, layer_drop="minima", drop_layers=1)
    assert plan.layers == [0]
    student = slice_model(tiny_model, plan)
    skip = a.layers()[1].register_forward_hook(lambda m, args, out: args[0])
    try:
        reference = logits(tiny_model, X)
    finally:
        skip.remove()
    assert (reference - logits(student, X)).abs().max() <= 1e-5
    assert student.config.num_hidden_layers == 1
    assert student.generate(X[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_sequential_residual_gpt_neox():
    """Pythia uses the parallel residual; other NeoX checkpoints add attention first."""
    from conftest import tiny_gpt_neox
    torch.manual_seed(0)
    model = tiny_gpt_neox(use_parallel_residual=False)
    assert adapter_for(model).mid_norm(model.gpt_neox.layers[0]) is not None  # two adds: masked after each
    plan = make_plan(model, random_scores(model), sparsity=0.5)
    with masked(model, plan):
        cut = logits(model, X)
    assert (cut - logits(slice_model(model, plan), X)).abs().max() <= 1e-4

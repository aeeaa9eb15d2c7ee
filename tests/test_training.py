"""capgap.training's one precision rule, as every pass outside the Trainer reads it."""

import pytest
import torch

from capgap.training import autocast_for, precision_dtype


@pytest.mark.parametrize("precision, want", [
    ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("bf16", torch.bfloat16),
    ("16-mixed", torch.float16), ("16-true", torch.float16), ("16", torch.float16), (16, torch.float16),
    ("32-true", None), ("32", None), (32, None), ("64-true", None)])
def test_precision_dtype_reads_mixed_and_true_alike(precision, want):
    assert precision_dtype(precision) == want


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_autocast_outside_the_trainer_follows_the_same_rule(precision):
    with autocast_for({"precision": precision}, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for({"precision": "32-true"}, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32

"""Students on disk: uniform ones load with stock transformers, every one with load_pruned
(non-uniform ones with stock transformers too, trust_remote_code=True: test_student_export)."""

import copy

import pytest
import torch
from prune_helpers import logits
from transformers import AutoModelForCausalLM

from capgap.models.adapters import adapter_for
from capgap.prune import load_pruned
from capgap.prune.planner import make_plan
from capgap.prune.scores import random_scores
from capgap.prune.slicing import PLAN_FILE, is_uniform, save_pruned, slice_model
from capgap.prune.summary import summary
from capgap.runtime.errors import CapgapError

X = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))


def test_uniform_student_reloads_with_plain_transformers(tiny_model, tmp_path):
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.5, ranking="uniform")
    assert is_uniform(plan, adapter_for(tiny_model))
    student = slice_model(tiny_model, plan)
    save_pruned(student, plan, tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert torch.equal(logits(reloaded, X), logits(student, X))
    assert reloaded.config.hidden_size == len(plan.hidden)


def test_minima_student_is_a_stock_checkpoint(tiny_model, tmp_path):
    """prune=minima: one uniform shape, the bottom and top layers dropped, plain HF on disk."""
    cfg = copy.deepcopy(tiny_model.config)
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    teacher = type(tiny_model)(cfg).eval()
    plan = make_plan(teacher, random_scores(teacher), sparsity=0.6, ranking="uniform", layer_drop="minima",
                     drop_layers=2)
    assert plan.layers == [1, 2]
    student = slice_model(teacher, plan)
    save_pruned(student, plan, tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.hidden_size == len(plan.hidden)
    assert torch.equal(logits(reloaded, X), logits(student, X))


def test_non_uniform_student_reloads_with_load_pruned(tiny_model, tmp_path):
    scores = random_scores(tiny_model)
    scores.neurons[1] *= 0.1
    plan = make_plan(tiny_model, scores, sparsity=0.6, ranking="global")
    assert not is_uniform(plan, adapter_for(tiny_model))
    student = slice_model(tiny_model, plan)
    save_pruned(student, plan, tmp_path / "student")
    reloaded = load_pruned(tmp_path / "student")
    assert torch.equal(logits(reloaded, X), logits(student, X))
    tied = tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) == tied
    with pytest.raises(ValueError):  # without its modeling file the stock loader refuses
        AutoModelForCausalLM.from_pretrained(tmp_path / "student", trust_remote_code=False)


def test_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.5, ranking="uniform")
    student = slice_model(tiny_model, plan)
    target = tmp_path / "student"
    save_pruned(student, plan, target)
    first = (target / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(type(student), "save_pretrained", crash)
    with pytest.raises(RuntimeError):
        save_pruned(student, plan, target)
    assert (target / "model.safetensors").read_bytes() == first and (target / PLAN_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temp folder left


def test_errors_write_nothing(tiny_model, tmp_path):
    for kw in (dict(sparsity=1.0), dict(size=10**9)):
        with pytest.raises(CapgapError):
            save_pruned(slice_model(tiny_model, make_plan(tiny_model, random_scores(tiny_model), **kw)),
                        None, tmp_path / "student")
    assert not any(tmp_path.iterdir())


def test_summary_table(tiny_model):
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.5)
    student = slice_model(tiny_model, plan)
    text, scalars = summary(tiny_model, student, plan)
    assert "attention" in text and "layer" in text
    assert scalars["params/total/student"] < scalars["params/total/teacher"]
    assert scalars["width/layer_0/heads"] == len(plan.heads[0]) * adapter_for(tiny_model).heads_per_group
    assert scalars["width/hidden"] == len(plan.hidden)

"""Plans: sparsity split, exact size within 1%, limits, layer dropping, one-line errors."""

import copy

import pytest
import torch

from capgap.errors import CapgapError
from capgap.models.params import count_params
from capgap.prune.plan import make_plan
from capgap.prune.scores import random_scores
from capgap.prune.slicing import slice_model


@pytest.mark.parametrize("ranking", ["global", "uniform"])
def test_size_target_within_one_percent(tiny_model, ranking):
    teacher = count_params(tiny_model)["total"]
    for frac in (0.4, 0.6):
        size = int(teacher * frac)
        plan = make_plan(tiny_model, random_scores(tiny_model), size=size, ranking=ranking, multiple=1)
        got = count_params(slice_model(tiny_model, plan))["total"]
        assert abs(got - size) <= 0.01 * size, (got, size)


def test_size_target_bigger_model_default_rounding():
    from conftest import tiny_llama
    model = tiny_llama(hidden_size=192, num_attention_heads=12, num_key_value_heads=12,
                       intermediate_size=512, num_hidden_layers=4)
    size = count_params(model)["total"] // 2
    plan = make_plan(model, random_scores(model), size=size)
    assert abs(count_params(slice_model(model, plan))["total"] - size) <= 0.01 * size
    assert all(len(n) % 8 == 0 for n in plan.neurons) and len(plan.hidden) % 8 == 0


def test_sparsity_split_and_rounding(tiny_model):
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.5)
    kept = 1 - (1 - 0.5) ** 0.5  # p' pruned, per component
    D = tiny_model.config.hidden_size
    assert abs(len(plan.hidden) - D * (1 - kept)) <= 8
    assert len(plan.hidden) % 8 == 0 and all(len(n) % 8 == 0 for n in plan.neurons)


def test_global_ranking_follows_scores(tiny_model):
    scores = random_scores(tiny_model)
    scores.neurons[1] *= 0.01  # layer 1's neurons all weak
    plan = make_plan(tiny_model, scores, sparsity=0.5)
    assert len(plan.neurons[1]) < len(plan.neurons[0])
    assert len(plan.neurons[1]) >= 8  # a few neurons always stay


def test_heads_floor_and_cap(tiny_model):
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.99)
    assert all(len(h) >= 1 for h in plan.heads)


def test_block_influence_drops_least_influential(tiny_model):
    influence = torch.tensor([0.9, 0.1])
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.3, layer_drop="block_influence",
                     drop_layers=1, influence=influence)
    assert plan.layers == [0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.2), r"^prune\.sparsity=1\.2 is outside \[0, 1\)$"),
    (dict(sparsity=-0.1), r"^prune\.sparsity=-0\.1 is outside \[0, 1\)$"),
    (dict(size=10**9), r"^student\.size=1000000000 is not below the teacher's \d+ parameters$"),
    (dict(sparsity=0.5, ranking="best"), r"^prune\.ranking=best"),
    (dict(sparsity=0.5, drop_layers=1), r"^prune\.drop_layers=1 needs prune\.layer_drop"),
])
def test_user_errors_are_one_line(tiny_model, kwargs, message):
    with pytest.raises(CapgapError, match=message) as e:
        make_plan(tiny_model, random_scores(tiny_model), **kwargs)
    assert "\n" not in str(e.value)


def test_layer_without_heads_is_an_error_unless_dropping(tiny_model):
    cfg = copy.deepcopy(tiny_model.config)
    cfg.num_hidden_layers = 3
    model = type(tiny_model)(cfg).eval()
    scores = random_scores(model)
    scores.heads[1] *= 1e-3  # layer 1's heads lose every global comparison
    kw = dict(sparsity=0.9, min_heads=0, max_head_sparsity=0.6)
    with pytest.raises(CapgapError, match=r"^plan leaves layer 1 with no attention head while prune\.layer_drop is off$"):
        make_plan(model, scores, **kw)
    # with layer dropping on, the headless layer goes too (after block influence drops layer 2)
    plan = make_plan(model, scores, layer_drop="block_influence", drop_layers=1,
                     influence=torch.tensor([0.5, 0.9, 0.1]), **kw)
    assert plan.layers == [0]

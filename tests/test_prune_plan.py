"""Plans: sparsity split, uniform plans and exact sizes on target, limits, layer dropping
(MiniMA's recipe), one-line errors."""

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from capgap.models.adapters import adapter_for
from capgap.models.params import count_params
from capgap.models.zoo import build_from_config
from capgap.prune.planner import SlicedCount, make_plan
from capgap.prune.scores import random_scores
from capgap.prune.slicing import is_uniform, slice_model
from capgap.runtime.errors import CapgapError

TEACHERS = Path(__file__).resolve().parents[1] / "conf" / "teacher"
HUB_ZOO = sorted(p.stem for p in TEACHERS.glob("*.yaml") if not p.stem.startswith("micro_"))
MICRO_ZOO = sorted(p.stem for p in TEACHERS.glob("micro_*.yaml"))


def meta_teacher(name):
    """A zoo teacher's architecture from its yaml, parameters on the meta device: no weights."""
    t = OmegaConf.load(TEACHERS / f"{name}.yaml")
    config = OmegaConf.to_container(t.config, resolve=True)
    if t.source == "micro":
        config["vocab_size"] = t.vocab_size
    with torch.device("meta"):
        return build_from_config(t.arch, config)


def layer_sparsity(teacher, plan):
    return 1 - count_params(slice_model(teacher, plan))["non_embedding"] / count_params(teacher)["non_embedding"]


@pytest.mark.parametrize("name", HUB_ZOO)
def test_uniform_lands_on_target_sparsity(name):
    """prune=uniform and prune=minima on every hub teacher, default rounding (multiples of 8):
    within 1% of the target (e.g. 0.3 ± 0.003), one shape for every layer, stock-loadable."""
    teacher = meta_teacher(name)
    scores = random_scores(teacher)
    n_layers = teacher.config.num_hidden_layers
    for p in (0.2, 0.3, 0.5, 0.7):
        plan = make_plan(teacher, scores, sparsity=p, ranking="uniform")
        assert abs(layer_sparsity(teacher, plan) - p) <= 0.01 * p, (name, p)
        assert is_uniform(plan, adapter_for(teacher))
    plan = make_plan(teacher, scores, sparsity=0.5, ranking="uniform", layer_drop="minima", drop_layers=2)
    assert plan.layers == list(range(1, n_layers - 1))
    assert abs(layer_sparsity(teacher, plan) - 0.5) <= 0.005, name
    assert is_uniform(plan, adapter_for(teacher))


@pytest.mark.parametrize("name", MICRO_ZOO)
def test_uniform_lands_on_target_sparsity_micro(name):
    """The micro family is 32-192 wide: one step of 8 neurons can move a 2-layer model by
    more than 1% of its target, so these are held to 1% at prune.multiple=1."""
    teacher = meta_teacher(name)
    for p in (0.3, 0.5, 0.7):
        plan = make_plan(teacher, random_scores(teacher), sparsity=p, ranking="uniform", multiple=1)
        assert abs(layer_sparsity(teacher, plan) - p) <= 0.01 * p, (name, p)


ROUND_SIZES = ("100K", "200K", "250K", "600K", "1M")


# the two smallest (the reported case) by default; the rest plan for 10-30 s each on a busy CPU
@pytest.mark.parametrize("name", [n if n in ("micro_xs", "micro_s") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MICRO_ZOO])
def test_round_sizes_of_the_micro_family_plan_at_defaults(name, caplog):
    """`teacher=micro_xs student.size=200K` at prune.multiple=8 fell between hidden 16 and 24
    (one step of 8 moves the embeddings and head by 65K) and stopped: the planner now steps
    down to a finer multiple and says so in one line."""
    from capgap.runtime.sizes import parse_size
    teacher = meta_teacher(name)
    total = count_params(teacher)["total"]
    for size in [parse_size(s) for s in ROUND_SIZES if parse_size(s) < total]:
        caplog.clear()
        with caplog.at_level("INFO"):
            plan = make_plan(teacher, random_scores(teacher), size=size)
        got = count_params(slice_model(teacher, plan))["total"]
        assert abs(got - size) <= 0.01 * size, (name, size, got)
        finer = [r.getMessage() for r in caplog.records if "planned at prune.multiple=" in r.getMessage()]
        if len(plan.hidden) % 8 or any(len(n) % 8 for n in plan.neurons):
            assert len(finer) == 1, (name, size)  # a finer multiple is never silent
        else:
            assert not finer, (name, size)  # where 8 lands, 8 is kept
        if (name, size) == ("micro_xs", 200_000):
            assert finer  # the reported case


def test_a_size_no_multiple_reaches_is_one_line(tiny_model):
    # below the embeddings of a 1-wide student no multiple helps: say so, not "try a smaller one"
    with pytest.raises(CapgapError, match=r"^student\.size=100 cannot be reached within 1% even at "
                                          r"prune\.multiple=1 \(nearest \d+ or -?\d+\); choose another size$"):
        make_plan(tiny_model, random_scores(tiny_model), size=100)


def test_sliced_count_equals_slicing(tiny_model):
    scores = random_scores(tiny_model)
    scores.neurons[1] *= 0.1
    for kw in (dict(sparsity=0.5), dict(sparsity=0.3, ranking="uniform"), dict(sparsity=0.6, layer_drop="minima", drop_layers=1)):
        plan = make_plan(tiny_model, scores, **kw)
        n = count_params(slice_model(tiny_model, plan))
        assert all(SlicedCount(tiny_model.config, k)(plan.widths()) == n[k] for k in n), kw


def test_dropping_more_than_the_target_is_an_error(tiny_model):
    with pytest.raises(CapgapError, match=r"^the layers left after prune\.drop_layers hold [\d,]+ non_embedding "
                                          r"parameters at full width, fewer than the target [\d,]+: drop fewer layers$"):
        make_plan(tiny_model, random_scores(tiny_model), sparsity=0.2, ranking="uniform",
                  layer_drop="minima", drop_layers=1)


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
    # the dropped layer is half of p: a sparsity below it cannot be met (test_dropping_more_than...)
    plan = make_plan(tiny_model, random_scores(tiny_model), sparsity=0.6, layer_drop="block_influence",
                     drop_layers=1, influence=influence)
    assert plan.layers == [0]
    with pytest.raises(CapgapError, match="drop fewer layers$"):
        make_plan(tiny_model, random_scores(tiny_model), sparsity=0.3, layer_drop="block_influence",
                  drop_layers=1, influence=influence)


@pytest.mark.parametrize("name", ["micro_l", "micro_xl"])
def test_shortgpt_lands_on_its_target_sparsity(name):
    """prune=shortgpt (global ranking, layers dropped by block influence): the dropped layer
    is part of p, so the widths are solved for the rest, not cut by p′ on top of it."""
    teacher = meta_teacher(name)
    influence = torch.tensor([0.9, 0.2, 0.5, 0.8])
    for p in (0.4, 0.6):
        plan = make_plan(teacher, random_scores(teacher), sparsity=p, layer_drop="block_influence",
                         drop_layers=1, influence=influence, multiple=1)
        assert plan.layers == [0, 2, 3]
        assert abs(layer_sparsity(teacher, plan) - p) <= 0.01 * p, (name, p, layer_sparsity(teacher, plan))


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

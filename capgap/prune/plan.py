"""From scores to a plan: which layers, head groups, FFN neurons and hidden dims survive.

Two targets: a sparsity p, split as p' = 1 − √(1 − p) per component because the
hidden cut and the head/neuron cut multiply; or an exact student size, where the split
is solved so the sliced model's count_params lands within 1% of it.
"""

import math
from dataclasses import asdict, dataclass, field

import torch

from capgap.errors import CapgapError
from capgap.models.adapters import adapter_for
from capgap.models.params import count_params

RANKINGS = ("global", "uniform")
LAYER_DROPS = ("off", "minima", "block_influence")


@dataclass
class Plan:
    """Teacher indices kept, in teacher order. heads[i]/neurons[i] belong to teacher layer layers[i]."""

    hidden: list[int]
    layers: list[int]
    heads: list[list[int]]   # key/value groups (= heads without GQA)
    neurons: list[list[int]]
    teacher: dict = field(default_factory=dict, repr=False)  # teacher config, for rebuilding

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**d)

    def widths(self) -> dict:
        return {"hidden": len(self.hidden), "layers": list(self.layers),
                "heads": [len(h) for h in self.heads], "neurons": [len(n) for n in self.neurons]}


def _round_to(x: float, m: int) -> int:
    return int(round(x / m)) * m


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(scores.topk(k).indices.tolist())


def _global_counts(scores: torch.Tensor, total: int, minimum: int) -> list[int]:
    """Per-row counts from one ranking over all rows, each row keeping at least `minimum`."""
    s = scores.clone().float()
    if minimum:
        s.scatter_(1, s.topk(minimum, dim=1).indices, math.inf)
    flat = torch.zeros(s.numel())
    flat[s.flatten().topk(total).indices] = 1
    return flat.view_as(s).sum(1).long().tolist()


def _widths(adapter, scores, layers, p_hidden, p_heads, p_neurons, o) -> Plan:
    D, G, F = adapter.hidden, adapter.n_groups, scores.neurons.shape[1]
    L, m = len(layers), o["multiple"]
    group_width = adapter.heads_per_group * adapter.head_dim
    uniform = o["ranking"] == "uniform"
    heads_s, neurons_s = scores.heads[layers], scores.neurons[layers]
    p_heads = min(p_heads, o["max_head_sparsity"])
    min_heads, min_neurons = o["min_heads"], min(F, o["min_neurons"])
    n_uniform_heads = max(min_heads, min(G, round(G * (1 - p_heads))))

    # A uniform plan should rebuild from a stock HF config: GPT-2/NeoX blocks need
    # heads * head_dim == hidden (so hidden is rounded to whole heads and sets the head
    # count); LLaMA's config validator needs hidden % query heads == 0.
    if not uniform:
        m_hidden = m
    elif adapter.attn_width_is_hidden:
        m_hidden = math.lcm(m, group_width)
    else:
        m_hidden = math.lcm(m, max(1, n_uniform_heads * adapter.heads_per_group))
    n_hidden = min(D, max(m_hidden, _round_to(D * (1 - p_hidden), m_hidden)))

    if not uniform:
        total = max(L * min_heads, min(L * G, round(L * G * (1 - p_heads))))
        n_heads = _global_counts(heads_s, total, min_heads)
    elif adapter.attn_width_is_hidden:
        n_heads = [max(min_heads, min(G, n_hidden // group_width))] * L
    else:
        n_heads = [n_uniform_heads] * L

    def neurons_for(x):
        return max(min_neurons, min(F, _round_to(x, m)))
    if uniform:
        n_neurons = [neurons_for(F * (1 - p_neurons))] * L
    else:
        total = max(L * min_neurons, min(L * F, round(L * F * (1 - p_neurons))))
        n_neurons = [neurons_for(c) for c in _global_counts(neurons_s, total, min_neurons)]

    return Plan(hidden=_top(scores.hidden, n_hidden), layers=list(layers),
                heads=[_top(heads_s[i], n) if n else [] for i, n in enumerate(n_heads)],
                neurons=[_top(neurons_s[i], n) for i, n in enumerate(n_neurons)],
                teacher=adapter.config.to_dict())


def _check_heads(plan: Plan, layer_drop: str) -> Plan:
    """A layer with no head is an error unless layer dropping is on, where it is dropped."""
    empty = [i for i, h in enumerate(plan.heads) if not h]
    if empty and layer_drop == "off":
        raise CapgapError(f"plan leaves layer {plan.layers[empty[0]]} with no attention head "
                          f"while prune.layer_drop is off")
    keep = [i for i in range(len(plan.layers)) if i not in empty]
    return Plan(plan.hidden, [plan.layers[i] for i in keep], [plan.heads[i] for i in keep],
                [plan.neurons[i] for i in keep], plan.teacher)


def _kept_layers(n: int, layer_drop: str, drop_layers: int, influence) -> list[int]:
    if layer_drop == "off":
        if drop_layers:
            raise CapgapError(f"prune.drop_layers={drop_layers} needs prune.layer_drop=minima or block_influence")
        return list(range(n))
    if not 0 < drop_layers < n:
        raise CapgapError(f"prune.drop_layers={drop_layers} must be between 1 and {n - 1} for a {n}-layer teacher")
    if layer_drop == "minima":  # MiniMA: k bottom + k top (odd counts take the extra from the top)
        bottom = drop_layers // 2
        dropped = set(range(bottom)) | set(range(n - (drop_layers - bottom), n))
    else:  # ShortGPT: drop the layers that change their input least
        if influence is None:
            raise ValueError("layer_drop=block_influence needs influence scores (scores.block_influence)")
        dropped = set(torch.as_tensor(influence).topk(drop_layers, largest=False).indices.tolist())
    return [i for i in range(n) if i not in dropped]


def skeleton(config):
    """The teacher's architecture with parameters on the meta device: free to build, slice and count."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # init_empty_weights skips tying; slicing needs to see it
    return model


def count_plan(skel, plan: Plan) -> int:
    from capgap.prune.slicing import slice_model  # slicing imports Plan from here
    return count_params(slice_model(skel, plan))["total"]


def make_plan(model, scores, *, sparsity=None, size=None, ranking="global", multiple=8, min_heads=1,
              min_neurons=None, max_head_sparsity=0.9, layer_drop="off", drop_layers=0,
              influence=None) -> Plan:
    """Scores → Plan. Give exactly one of `sparsity` (prune.sparsity) or `size` (student.size,
    total parameters as count_params counts them). `influence`: per-layer block influence,
    needed only for layer_drop="block_influence"."""
    if (sparsity is None) == (size is None):
        raise CapgapError("set exactly one of prune.sparsity and student.size")
    if ranking not in RANKINGS:
        raise CapgapError(f"prune.ranking={ranking} is not one of {', '.join(RANKINGS)}")
    if layer_drop not in LAYER_DROPS:
        raise CapgapError(f"prune.layer_drop={layer_drop} is not one of {', '.join(LAYER_DROPS)}")
    if multiple < 1:
        raise CapgapError(f"prune.multiple={multiple} must be at least 1")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise CapgapError(f"prune.sparsity={sparsity} is outside [0, 1)")
    teacher_size = count_params(model)["total"]
    if size is not None and size <= 0:
        raise CapgapError(f"student.size={size} must be positive")
    if size is not None and size >= teacher_size:
        raise CapgapError(f"student.size={size} is not below the teacher's {teacher_size} parameters")

    adapter = adapter_for(model)
    o = dict(ranking=ranking, multiple=multiple, min_heads=min_heads, max_head_sparsity=max_head_sparsity,
             min_neurons=multiple if min_neurons is None else min_neurons)
    layers = _kept_layers(len(adapter.layers()), layer_drop, drop_layers, influence)

    def plan(p_hidden, p_heads, p_neurons):
        return _check_heads(_widths(adapter, scores, layers, p_hidden, p_heads, p_neurons, o), layer_drop)

    if sparsity is not None:
        p = 1 - math.sqrt(1 - sparsity)
        return plan(p, p, p)
    return _solve(model, plan, size, len(layers) * adapter.n_groups)


def _solve(model, plan, size: int, n_groups: int) -> Plan:
    """Find the split whose sliced size is nearest `size`: first one p' for every cut, then,
    with hidden and heads held, the neuron sparsity alone: its steps are the finest, while
    a hidden dim or a head moves the count by too much to land within 1% on small models."""
    skel = skeleton(model.config)
    best = [math.inf, None]

    def count(*p):
        candidate = plan(*p)
        n = count_plan(skel, candidate)
        if abs(n - size) < best[0]:
            best[:] = [abs(n - size), candidate]
        return n

    def bisect(f):  # f falls as its argument grows; 24 halvings reach any rounding step
        lo, hi = 0.0, 0.999
        for _ in range(24):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > size else (lo, mid)
        return hi

    bisect(lambda p: count(p, p, p))
    # hold the widths found: fractions that reproduce the same rounded counts
    p_hidden = 1 - len(best[1].hidden) / model.config.hidden_size
    p_heads = 1 - sum(map(len, best[1].heads)) / n_groups
    bisect(lambda p: count(p_hidden, p_heads, p))
    # on small models one step of hidden moves the count by more than 1% (embeddings are
    # most of it): try the neighbouring hidden widths too, tuning neurons for each
    step = 1 / model.config.hidden_size
    for shift in (-8, -4, -2, -1, 1, 2, 4, 8):
        if best[0] <= 0.01 * size:
            break
        p = min(max(p_hidden + shift * step * 4, 0.0), 0.999)
        bisect(lambda q, p=p: count(p, p_heads, q))
    if best[0] > 0.01 * size:
        raise CapgapError(f"student.size={size} cannot be reached within 1% (nearest "
                          f"{size + best[0]:.0f} or {size - best[0]:.0f}); try a smaller prune.multiple")
    return best[1]

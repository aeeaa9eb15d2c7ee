"""From scores to a plan: which layers, head groups, FFN neurons and hidden dims survive.

Targets: a sparsity p over the layers (non-embedding parameters), or an exact student size
(total parameters). A globally ranked plan splits p as p' = 1 − √(1 − p) per component, the
paper's rule (the hidden cut and the head/neuron cut multiply). A uniform plan must round
to whole heads (GPT-2/NeoX: hidden in whole heads too), which moves its count by several
percent, and a plan that drops layers (MiniMA, ShortGPT) has removed part of p before any
width is cut, so their widths are solved against the sliced count instead; so are size
targets, which must land within 1% (at a finer multiple when prune.multiple cannot).
"""

import copy
import math

import torch

from capgap.models.adapters import adapter_for
from capgap.models.params import count_params
from capgap.prune.plan import Plan
from capgap.prune.slicing import skeleton, slice_model
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import report

RANKINGS = ("global", "uniform")
LAYER_DROPS = ("off", "minima", "block_influence")


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


def _widths(adapter, scores, layers, p_hidden, p_heads, p_neurons, o) -> dict:
    """How many of each unit survive, in Plan.widths()'s form; which ones is _select's job
    (done once, not at every step of a solver)."""
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

    return {"hidden": n_hidden, "layers": list(layers), "heads": n_heads, "neurons": n_neurons}


def _check_heads(w: dict, layer_drop: str) -> dict:
    """A layer with no head is an error unless layer dropping is on, where it is dropped."""
    empty = [i for i, h in enumerate(w["heads"]) if not h]
    if empty and layer_drop == "off":
        raise CapgapError(f"plan leaves layer {w['layers'][empty[0]]} with no attention head "
                          f"while prune.layer_drop is off")
    keep = [i for i in range(len(w["layers"])) if i not in empty]
    return {"hidden": w["hidden"], **{k: [w[k][i] for i in keep] for k in ("layers", "heads", "neurons")}}


def _select(adapter, scores, w: dict) -> Plan:
    """The best-scoring units for the widths `w`."""
    return Plan(hidden=_top(scores.hidden, w["hidden"]), layers=w["layers"],
                heads=[_top(scores.heads[l], n) for l, n in zip(w["layers"], w["heads"])],
                neurons=[_top(scores.neurons[l], n) for l, n in zip(w["layers"], w["neurons"])],
                teacher=adapter.config.to_dict())


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


def make_plan(model, scores, *, sparsity=None, size=None, ranking="global", multiple=8, min_heads=1,
              min_neurons=None, max_head_sparsity=0.9, layer_drop="off", drop_layers=0,
              influence=None) -> Plan:
    """Scores → Plan. Give exactly one of `sparsity` (prune.sparsity: the share of layer
    parameters removed) or `size` (student.size, total parameters as count_params counts
    them). `influence`: per-layer block influence, needed only for layer_drop="block_influence"."""
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
    counts = count_params(model)
    if size is not None and size <= 0:
        raise CapgapError(f"student.size={size} must be positive")
    if size is not None and size >= counts["total"]:
        raise CapgapError(f"student.size={size} is not below the teacher's {counts['total']} parameters")

    adapter = adapter_for(model)
    layers = _kept_layers(len(adapter.layers()), layer_drop, drop_layers, influence)

    def widths_at(m):
        o = dict(ranking=ranking, multiple=m, min_heads=min_heads, max_head_sparsity=max_head_sparsity,
                 min_neurons=m if min_neurons is None else min_neurons)
        return lambda p_hidden, p_heads, p_neurons: _check_heads(
            _widths(adapter, scores, layers, p_hidden, p_heads, p_neurons, o), layer_drop)
    widths = widths_at(multiple)

    if size is not None:
        # on a small teacher one step of `multiple` hidden dims moves the embeddings and head by
        # 2·multiple·vocab, so a round size can fall between two steps (micro_xs: 200K sits
        # between hidden 16 and 24): finer multiples before giving up, said in one line
        counter = SlicedCount(model.config, "total")  # its slices serve every multiple
        for m in [d for d in range(multiple, 0, -1) if multiple % d == 0]:
            best, miss = _solve(model, widths_at(m), size, "total", len(layers) * adapter.n_groups, 0.01 * size,
                                counter)
            if miss <= 0.01 * size:
                break
        if miss > 0.01 * size:
            raise CapgapError(f"student.size={size} cannot be reached within 1% even at prune.multiple=1 "
                              f"(nearest {size + miss:.0f} or {size - miss:.0f}); choose another size")
        if m != multiple:
            report(f"student.size={size:,} falls between two widths at prune.multiple={multiple}; "
                   f"planned at prune.multiple={m}")
    elif ranking == "global" and layer_drop == "off":
        p = 1 - math.sqrt(1 - sparsity)
        best = widths(p, p, p)
    else:  # the nearest the rounding allows: within 1% of p on every zoo teacher (tests/test_prune_plan.py);
        # dropped layers (ShortGPT, MiniMA) already removed their share, so p′ alone would overshoot
        n = counts["non_embedding"]
        best = _solve(model, widths, round((1 - sparsity) * n), "non_embedding", len(layers) * adapter.n_groups,
                      0.01 * sparsity * n)[0]
    return _select(adapter, scores, best)


class SlicedCount:
    """count_params(slice_model(teacher, plan))[measure] without slicing the whole teacher.

    A student's count is its embeddings, final norm and head (set by the hidden width) plus
    one term per layer (set by that layer's widths and the hidden width), so a one-layer
    skeleton, sliced once per distinct width, counts any plan: slicing the full skeleton at
    every bisection step took seconds on 30-layer teachers.
    """

    def __init__(self, config, measure: str):
        one_layer = copy.deepcopy(config)
        one_layer.num_hidden_layers = 1
        self.skeleton, self.measure, self.parts = skeleton(one_layer), measure, {}

    def _part(self, hidden: int, heads: int, neurons: int) -> tuple[int, int]:
        key = (hidden, heads, neurons)
        if key not in self.parts:
            first = lambda n: list(range(n))
            student = slice_model(self.skeleton, Plan(first(hidden), [0], [first(heads)], [first(neurons)]))
            layer = sum(p.numel() for p in adapter_for(student).layers()[0].parameters())
            self.parts[key] = (count_params(student)[self.measure] - layer, layer)
        return self.parts[key]

    def __call__(self, w: dict) -> int:
        """`w`: widths as Plan.widths() gives them."""
        parts = [self._part(w["hidden"], h, n) for h, n in zip(w["heads"], w["neurons"])]
        return parts[0][0] + sum(layer for _, layer in parts)


def _solve(model, widths, target: int, measure: str, n_groups: int, tolerance: float,
           sliced_count: SlicedCount | None = None) -> tuple[dict, int]:
    """The split whose sliced count (count_params[measure]) is nearest `target`, and how far it
    misses (the search stops early once within `tolerance`): first one p' for every cut, then, with hidden and heads held, the neuron sparsity
    alone (its steps are the finest, while a hidden dim or a head moves the count by too much
    to land within 1% on small models), then the neighbouring hidden widths."""
    sliced_count = sliced_count or SlicedCount(model.config, measure)
    best = [math.inf, None]

    def count(*p):
        candidate = widths(*p)
        n = sliced_count(candidate)
        if abs(n - target) < best[0]:
            best[:] = [abs(n - target), candidate]
        return n

    full = count(0.0, 0.0, 0.0)
    if full < target and len(best[1]["layers"]) < len(adapter_for(model).layers()):
        raise CapgapError(f"the layers left after prune.drop_layers hold {full:,} {measure} parameters "
                          f"at full width, fewer than the target {target:,}: drop fewer layers")

    def bisect(f):  # f falls as its argument grows; 24 halvings reach any rounding step
        lo, hi = 0.0, 0.999
        for _ in range(24):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
        return hi

    bisect(lambda p: count(p, p, p))
    # hold the widths found: fractions that reproduce the same rounded counts
    p_hidden = 1 - best[1]["hidden"] / model.config.hidden_size
    p_heads = 1 - sum(best[1]["heads"]) / n_groups
    bisect(lambda p: count(p_hidden, p_heads, p))
    # on small models one step of hidden moves the count by more than 1% (embeddings are
    # most of it): try the neighbouring hidden widths too, tuning neurons for each
    step = 1 / model.config.hidden_size
    for shift in (-8, -4, -2, -1, 1, 2, 4, 8):
        if best[0] <= tolerance:
            break
        p = min(max(p_hidden + shift * step * 4, 0.0), 0.999)
        bisect(lambda q, p=p: count(p, p_heads, q))
    return best[1], best[0]

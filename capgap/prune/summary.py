"""Before/after table of a pruning: parameters per component and per-layer widths."""

from capgap.models.adapters import adapter_for
from capgap.models.params import count_params


def _components(model) -> dict[str, int]:
    a = adapter_for(model)
    n = lambda modules: sum(p.numel() for m in modules for p in m.parameters())
    layers = a.layers()
    out = {
        "embeddings": n(a.embeddings()),
        "attention": n(a.attn(l) for l in layers),
        "mlp": n(a.mlp(l) for l in layers),
        "norms": n(a.norms()),
    }
    head = a.lm_head()
    out["lm_head"] = 0 if head.weight is model.get_input_embeddings().weight else n([head])
    out["total"] = count_params(model)["total"]
    return out


def _widths(model) -> list[tuple[int, int]]:
    a = adapter_for(model)
    return [(a.n_heads(l), a.n_neurons(l)) for l in a.layers()]


def summary(teacher, student, plan=None) -> tuple[str, dict]:
    """A printable table and a flat {tag: number} dict for TensorBoard (add_scalar per key)."""
    before, after = _components(teacher), _components(student)
    rows = [f"{'component':<12}{'teacher':>14}{'student':>14}{'kept':>8}"]
    scalars = {}
    for k in before:
        kept = f"{after[k] / before[k]:.1%}" if before[k] else "-"  # e.g. a head tied to the embedding
        rows.append(f"{k:<12}{before[k]:>14,}{after[k]:>14,}{kept:>8}")
        scalars[f"params/{k}/teacher"], scalars[f"params/{k}/student"] = before[k], after[k]
    t_hidden, s_hidden = teacher.config.hidden_size, student.config.hidden_size
    rows.append(f"{'hidden':<12}{t_hidden:>14}{s_hidden:>14}{s_hidden / t_hidden:>8.1%}")
    scalars["width/hidden"] = s_hidden
    t_widths = _widths(teacher)
    layers = plan.layers if plan is not None else range(len(_widths(student)))
    rows.append(f"{'layer':<8}{'heads':>12}{'neurons':>16}")
    for i, (heads, neurons) in zip(layers, _widths(student)):
        th, tn = t_widths[i]
        rows.append(f"{i:<8}{f'{heads}/{th}':>12}{f'{neurons}/{tn}':>16}")
        scalars[f"width/layer_{i}/heads"], scalars[f"width/layer_{i}/neurons"] = heads, neurons
    dropped = sorted(set(range(len(t_widths))) - set(layers))
    if dropped:
        rows.append(f"dropped layers: {dropped}")
    scalars["width/layers"] = len(layers)
    return "\n".join(rows), scalars

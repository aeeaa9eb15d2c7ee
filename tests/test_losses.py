"""Each KD loss against a formula written out here token by token, values and gradients."""

import math

import pytest
import torch

from capgap.data.blocks import IGNORE
from capgap.distill.losses import DIVERGENCES, get_kd_loss
from capgap.models.lm_loss import shift_labels
from capgap.runtime.errors import CapgapError

N, V = 7, 5


def probs(logits, T):
    e = [math.exp(x / T) for x in logits]
    z = sum(e)
    return [x / z for x in e]


def log(x):
    # q holds 0-d tensors (so gradients flow), p plain floats
    return torch.log(torch.as_tensor(x, dtype=torch.float64))


def kl(p, q):
    return sum(pi * log(pi / qi) for pi, qi in zip(p, q))


# Reference divergences on plain Python lists: p = teacher, q = student.
REFERENCE = {
    "soft_ce": lambda p, q, kw: -sum(pi * log(qi) for pi, qi in zip(p, q)),
    "forward_kl": lambda p, q, kw: kl(p, q),
    "reverse_kl": lambda p, q, kw: kl(q, p),
    "jsd": lambda p, q, kw: (
        kw["beta"] * kl(p, [kw["beta"] * a + (1 - kw["beta"]) * b for a, b in zip(p, q)])
        + (1 - kw["beta"]) * kl(q, [kw["beta"] * a + (1 - kw["beta"]) * b for a, b in zip(p, q)])),
    "total_variation": lambda p, q, kw: 0.5 * sum(abs(a - b) for a, b in zip(p, q)),
    "skew_forward_kl": lambda p, q, kw: kl(p, [kw["skew"] * a + (1 - kw["skew"]) * b for a, b in zip(p, q)]),
    "skew_reverse_kl": lambda p, q, kw: kl(q, [kw["skew"] * b + (1 - kw["skew"]) * a for a, b in zip(p, q)]),
}
KWARGS = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"skew": 0.2}, "skew_reverse_kl": {"skew": 0.2}}


def reference_loss(s, t, targets, name, alpha, T):
    """Returns a differentiable scalar built from scalar ops: a separate autograd path."""
    kw = KWARGS.get(name, {})
    ce_terms, kd_terms = [], []
    for i in range(s.shape[0]):
        if targets[i] == IGNORE:
            continue
        row = [s[i, v] for v in range(V)]
        z = sum(torch.exp(x) for x in row)
        ce_terms.append(torch.log(z) - row[int(targets[i])])
        q = [torch.exp(x / T) for x in row]
        zq = sum(q)
        q = [x / zq for x in q]
        p = probs([float(x) for x in t[i]], T)
        kd_terms.append(T * T * REFERENCE[name](p, q, kw))
    n = len(ce_terms)
    ce = sum(ce_terms) / n
    kd = sum(kd_terms) / n
    return alpha * ce + (1 - alpha) * kd, ce, kd


@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_matches_reference(name, T):
    g = torch.Generator().manual_seed(hash(name) % 1000)
    s = (torch.randn(N, V, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[1, 4]] = IGNORE
    t[1] = 1e4  # garbage at an ignored position must not reach the loss

    out = get_kd_loss(name, alpha=0.3, temperature=T, **KWARGS.get(name, {}))(s, t, targets)
    ref = reference_loss(s, t, targets, name, 0.3, T)
    for got, want in zip(out, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_out, = torch.autograd.grad(out.loss, s)
    g_ref, = torch.autograd.grad(ref[0], s)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-9, atol=1e-12)
    assert g_out[[1, 4]].abs().max() == 0


def test_batched_shape_and_shift():
    labels = torch.tensor([[2, 3, 4, IGNORE], [1, 2, 3, 4]])
    assert shift_labels(labels).tolist() == [[3, 4, IGNORE, IGNORE], [2, 3, 4, IGNORE]]
    s, t = torch.randn(2, 4, V), torch.randn(2, 4, V)
    targets = shift_labels(labels)
    flat = get_kd_loss("forward_kl")(s.flatten(0, 1), t.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(get_kd_loss("forward_kl")(s, t, targets), flat)


def test_soft_ce_and_forward_kl_share_gradient():
    s = torch.randn(N, V, requires_grad=True)
    t, y = torch.randn(N, V), torch.randint(0, V, (N,))
    a, = torch.autograd.grad(get_kd_loss("soft_ce", alpha=0.0)(s, t, y).loss, s)
    b, = torch.autograd.grad(get_kd_loss("forward_kl", alpha=0.0)(s, t, y).loss, s)
    torch.testing.assert_close(a, b)


def test_kd_weight_and_all_ignored():
    s, t = torch.randn(N, V), torch.randn(N, V)
    y = torch.randint(0, V, (N,))
    out = get_kd_loss("reverse_kl", alpha=1.0, kd_weight=2.0)(s, t, y)
    torch.testing.assert_close(out.loss, out.ce + 2.0 * out.kd)
    empty = get_kd_loss()(s, t, torch.full((N,), IGNORE))
    assert empty.loss == 0 and not empty.loss.isnan()


@pytest.mark.parametrize("beta, kl", [(0, "forward_kl"), (0.0, "forward_kl"), (1, "reverse_kl"), (1.0, "reverse_kl")])
def test_jsd_at_either_end_is_refused_pointing_at_the_kl_trl_means(beta, kl):
    # at beta 0 or 1 the mixture equals one side and the other term weighs 0: zero loss, no gradient
    with pytest.raises(CapgapError, match=f"beta={beta} makes jsd a zero loss.*distill.loss.name={kl}"):
        get_kd_loss("jsd", beta=beta)
    s = torch.randn(4, 7, requires_grad=True)
    out = get_kd_loss("jsd", alpha=0.0, beta=0.01)(s, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    out.loss.backward()
    assert out.kd > 0 and s.grad.abs().sum() > 0  # just inside the ends it still teaches


def test_bad_names_and_values_are_one_line():
    with pytest.raises(CapgapError, match="unknown; choose one of soft_ce"):
        get_kd_loss("kl")
    with pytest.raises(CapgapError, match="beta"):
        get_kd_loss("jsd", beta=1.5)
    with pytest.raises(CapgapError, match="jsd takes no betta"):
        get_kd_loss("jsd", betta=0.3)
    with pytest.raises(CapgapError, match="temperature"):
        get_kd_loss(temperature=0)

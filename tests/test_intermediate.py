"""Intermediate losses against written-out formulas, and on tiny HF models of unequal shape."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_gpt_neox, tiny_llama

from capgap.distill.intermediate import HiddenStateMSE, attention_kl, layer_map
from capgap.runtime.errors import CapgapError

B, L, HS, HT = 2, 5, 3, 4


def test_layer_map():
    assert layer_map(6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]
    assert layer_map(4, 6) == [(1, 1), (2, 3), (3, 4), (4, 6)]
    assert layer_map(3, 2) == [(1, 1), (2, 1), (3, 2)]  # a deeper student still maps
    assert layer_map(4, 6, "last_k", k=2) == [(3, 5), (4, 6)]
    assert layer_map(4, 6, "explicit", pairs=[[0, 0], [4, 6]]) == [(0, 0), (4, 6)]
    with pytest.raises(CapgapError, match="k=5"):
        layer_map(4, 6, "last_k", k=5)
    with pytest.raises(CapgapError, match="pairs"):
        layer_map(4, 6, "explicit", pairs=[(5, 1)])
    with pytest.raises(CapgapError, match="unknown; choose one of uniform"):
        layer_map(4, 6, "last-k")


def test_hidden_mse_matches_reference():
    torch.manual_seed(0)
    pairs = [(1, 2), (2, 4)]
    mse = HiddenStateMSE(pairs, HS, HT).double()
    hs = [torch.randn(B, L, HS, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ht = [torch.randn(B, L, HT, dtype=torch.float64) for _ in range(5)]
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    got = mse(SimpleNamespace(hidden_states=hs), SimpleNamespace(hidden_states=ht), mask)

    ref = 0
    for (s, t), proj in zip(pairs, mse.proj):
        W = proj.weight
        terms = []
        for b in range(B):
            for i in range(L):
                if mask[b, i]:
                    diff = [sum(W[o, j] * hs[s][b, i, j] for j in range(HS)) - ht[t][b, i, o] for o in range(HT)]
                    terms.append(sum(d * d for d in diff) / HT)
        ref = ref + sum(terms) / len(terms)
    ref = ref / len(pairs)
    torch.testing.assert_close(got, ref)
    params = [hs[1], hs[2], mse.proj[0].weight]
    for a, b in zip(torch.autograd.grad(got, params, retain_graph=True), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)
    assert isinstance(HiddenStateMSE(pairs, HT, HT).proj[0], torch.nn.Identity)


def causal_probs(scores):
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, -math.inf).softmax(-1)


@pytest.mark.parametrize("heads", ["mean", "pairs"])
def test_attention_kl_matches_reference(heads):
    torch.manual_seed(1)
    s_scores = torch.randn(2, B, 2, L, L, dtype=torch.float64, requires_grad=True)  # 2 layers, 2 heads
    t_scores = torch.randn(3, B, 3, L, L, dtype=torch.float64)  # 3 layers, 3 heads
    s_attn = [causal_probs(x) for x in s_scores]
    t_attn = [causal_probs(x) for x in t_scores]
    pairs = [(1, 2), (2, 3)]
    head_pairs = [[(0, 2), (1, 0)], [(1, 1)]] if heads == "pairs" else None
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 4] = False
    got = attention_kl(s_attn, t_attn, pairs, head_pairs, mask)

    ref = 0
    for n, (ls, lt) in enumerate(pairs):
        terms = []
        for b in range(B):
            for q in range(L):
                if not mask[b, q]:
                    continue
                if head_pairs is None:
                    rows = [(sum(s_attn[ls - 1][b, h, q] for h in range(2)) / 2,
                             sum(t_attn[lt - 1][b, h, q] for h in range(3)) / 3)]
                else:
                    rows = [(s_attn[ls - 1][b, hs, q], t_attn[lt - 1][b, ht, q])
                            for hs, ht in head_pairs[n]]
                for p_s, p_t in rows:
                    # keys after q have probability 0 in both and contribute nothing
                    terms.append(sum(p_t[k] * torch.log(p_t[k] / p_s[k]) for k in range(q + 1)))
        ref = ref + sum(terms) / len(terms)
    ref = ref / len(pairs)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, s_scores, retain_graph=True)[0], torch.autograd.grad(ref, s_scores)[0])


def test_on_tiny_models_of_unequal_shape():
    """A narrower, shallower student with fewer heads, of another family, against a teacher."""
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(num_hidden_layers=4, attn_implementation="eager")
    student = tiny_llama(hidden_size=24, num_attention_heads=3, num_key_value_heads=1,
                         attn_implementation="eager").train()
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        t = teacher(ids, output_hidden_states=True, output_attentions=True)
    s = student(ids, output_hidden_states=True, output_attentions=True)
    pairs = layer_map(2, 4)
    mse = HiddenStateMSE(pairs, 24, 32)
    loss = mse(s, t) + attention_kl(s.attentions, t.attentions, pairs)
    loss.backward()
    assert loss.isfinite()
    assert mse.proj[0].weight.grad.abs().sum() > 0
    assert student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0

    sdpa = tiny_gpt_neox(attn_implementation="sdpa")(ids, output_attentions=True)
    with pytest.raises(CapgapError, match="eager"):
        attention_kl(sdpa.attentions, t.attentions, pairs)

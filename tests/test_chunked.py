"""Chunked KD equals the unchunked loss in value and gradient, for every divergence."""

import pytest
import torch
from conftest import tiny_gpt_neox
from torch import nn

from capgap.data.blocks import IGNORE
from capgap.distill.chunked import chunked_kd_loss
from capgap.distill.losses import DIVERGENCES, get_kd_loss
from capgap.models.lm_loss import shift_labels

B, L, HS, HT, V = 3, 11, 8, 12, 37


def setup(bias=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    s_head = nn.Linear(HS, V, bias=bias).to(dtype)
    t_head = nn.Linear(HT, V, bias=bias).to(dtype).requires_grad_(False)
    h_s = torch.randn(B, L, HS, dtype=dtype, requires_grad=True)
    h_t = torch.randn(B, L, HT, dtype=dtype)
    labels = torch.randint(0, V, (B, L))
    labels[0, :4] = IGNORE  # padding
    labels[2, 7] = IGNORE
    return h_s, s_head, h_t, t_head, shift_labels(labels)


def grads(out, h_s, s_head):
    params = [h_s, s_head.weight] + ([s_head.bias] if s_head.bias is not None else [])
    return torch.autograd.grad(out.loss, params)


def assert_rel_close(a, b, rtol):
    assert (a - b).abs().max() <= rtol * b.abs().max(), ((a - b).abs().max(), b.abs().max())


@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_chunked_equals_unchunked(name, chunk):
    h_s, s_head, h_t, t_head, y = setup(bias=name == "jsd")
    loss = get_kd_loss(name, alpha=0.4, temperature=2.0)
    full = loss(s_head(h_s), t_head(h_t), y)
    part = chunked_kd_loss(h_s, s_head, h_t, t_head, y, loss, chunk_size=chunk)
    for a, b in zip(part, full):
        assert_rel_close(a, b, 1e-5)
    for a, b in zip(grads(part, h_s, s_head), grads(full, h_s, s_head)):
        assert_rel_close(a, b, 1e-5)


def test_scaled_loss_and_bf16_and_no_grad():
    h_s, s_head, h_t, t_head, y = setup(bias=True)
    loss = get_kd_loss("reverse_kl")
    full = loss(s_head(h_s), t_head(h_t), y)
    part = chunked_kd_loss(h_s, s_head, h_t, t_head, y, loss, chunk_size=5)
    g_full, = torch.autograd.grad(0.25 * full.loss, s_head.weight)
    g_part, = torch.autograd.grad(0.25 * part.loss, s_head.weight)
    assert_rel_close(g_part, g_full, 1e-5)

    with torch.no_grad():
        evaluated = chunked_kd_loss(h_s, s_head, h_t, t_head, y, loss, chunk_size=5)
    torch.testing.assert_close(evaluated.loss, full.loss)

    args = setup(bias=False, dtype=torch.bfloat16)
    low = chunked_kd_loss(*args, loss, chunk_size=5)
    low.loss.backward()
    assert args[0].grad.dtype == torch.bfloat16 and args[1].weight.grad.dtype == torch.bfloat16
    assert low.loss.isfinite()


def test_on_a_real_model_with_tied_head():
    """The call DistillModule makes: HF hidden_states[-1] and get_output_embeddings()."""
    student = tiny_gpt_neox(tie_word_embeddings=True, hidden_size=16, num_attention_heads=2).train()
    teacher = tiny_gpt_neox()
    ids = torch.randint(0, 96, (2, 9))
    labels = ids.clone()
    labels[1, 6:] = IGNORE
    y = shift_labels(labels)
    loss = get_kd_loss("soft_ce")
    with torch.no_grad():
        t_out = teacher(ids, output_hidden_states=True)

    out = student(ids, output_hidden_states=True)
    full = loss(out.logits, t_out.logits, y)
    full_grads = torch.autograd.grad(full.loss, list(student.parameters()), allow_unused=True)

    out = student(ids, output_hidden_states=True)
    part = chunked_kd_loss(out.hidden_states[-1], student.get_output_embeddings(),
                           t_out.hidden_states[-1], teacher.get_output_embeddings(), y, loss, chunk_size=3)
    part_grads = torch.autograd.grad(part.loss, list(student.parameters()), allow_unused=True)
    assert_rel_close(part.loss, full.loss, 1e-5)
    # the CE term agrees with the model's own shifted LM loss
    torch.testing.assert_close(part.ce, student(ids, labels=labels).loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(part_grads, full_grads):
        if b is not None:
            assert_rel_close(a, b, 1e-5)

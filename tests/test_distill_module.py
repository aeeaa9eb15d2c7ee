"""DistillModule on tiny models: its loss is the unchunked reference, the teacher stays frozen
and out of checkpoints and optimiser, the CE baseline never runs the teacher."""

import pytest
import torch
from conftest import TINY, VOCAB

from capgap.data.blocks import IGNORE
from capgap.distill.intermediate import AttentionKL, HiddenStateMSE, attention_kl, layer_map
from capgap.distill.losses import KDLoss
from capgap.distill.module import DistillModule
from capgap.models.lm_loss import shift_labels
from capgap.runtime.errors import CapgapError

# a narrower student of the same family, as pruning makes
SMALL = {"gpt_neox": dict(hidden_size=16, num_attention_heads=2, intermediate_size=48),
         "gpt2": dict(n_embd=16, n_head=2),
         "llama": dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=1, intermediate_size=40)}


def pair(arch, **student_kw):
    torch.manual_seed(0)
    teacher = TINY[arch](num_hidden_layers=3)
    torch.manual_seed(1)
    student = TINY[arch](**{**SMALL[arch], **student_kw})  # eval: no dropout, so passes compare
    return teacher, student


def batch(b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels = ids.clone()
    labels[1, -4:] = IGNORE  # a padded tail, as the last packed block has
    return {"input_ids": ids, "labels": labels}


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("loss", [KDLoss(), KDLoss("reverse_kl", alpha=0.2, temperature=2.0)], ids=repr)
def test_loss_and_gradient_equal_unchunked_reference(arch, loss):
    teacher, student = pair(arch)
    module = DistillModule(student, teacher, loss, chunk_size=5)  # chunks that straddle rows
    b = batch()
    parts = module.compute_loss(b)
    parts["loss"].backward()
    got = grads(student)

    student.zero_grad()
    with torch.no_grad():
        t_logits = teacher(input_ids=b["input_ids"]).logits
    ref = loss(student(input_ids=b["input_ids"]).logits, t_logits, shift_labels(b["labels"]))
    ref.loss.backward()
    want = grads(student)
    torch.testing.assert_close(parts["loss"], ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ce"], ref.ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["kd"], ref.kd, rtol=1e-5, atol=1e-6)
    assert len(got) == len(want) == len(list(student.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_is_frozen_hidden_from_state_and_optimiser():
    teacher, student = pair("gpt_neox")
    teacher.train()
    hidden = HiddenStateMSE(layer_map(2, 3), student.config.hidden_size, teacher.config.hidden_size)
    module = DistillModule(student, teacher, terms={"hidden": hidden})
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(k.startswith(("model.", "terms.hidden.")) for k in module.state_dict())
    assert any(k.startswith("terms.hidden.proj") for k in module.state_dict())
    module.train()  # what Lightning does at the start of each epoch
    assert not teacher.training
    opt = module.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in hidden.parameters()} <= in_opt
    assert {id(p) for p in student.parameters()} <= in_opt


def test_ce_only_never_runs_the_teacher():
    teacher, student = pair("gpt2")
    teacher.forward = None  # any teacher forward would fail
    module = DistillModule(student, teacher, KDLoss(alpha=1.0, kd_weight=0.0))
    b = batch()
    parts = module.compute_loss(b)
    want = student(input_ids=b["input_ids"], labels=b["labels"]).loss
    torch.testing.assert_close(parts["loss"], want)
    assert set(parts) == {"loss", "ce"}


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_intermediate_terms_add_with_their_weights(arch):
    teacher, student = pair(arch)
    pairs = layer_map(2, 3)
    terms = {"hidden": HiddenStateMSE(pairs, student.config.hidden_size, teacher.config.hidden_size, 0.3),
             "attention": AttentionKL(pairs, 0.7)}
    module = DistillModule(student, teacher, KDLoss(), terms=terms)
    b = batch()
    parts = module.compute_loss(b)
    assert set(parts) == {"loss", "ce", "kd", "hidden", "attention"}
    mse = HiddenStateMSE(pairs, student.config.hidden_size, teacher.config.hidden_size)
    mse.load_state_dict(terms["hidden"].state_dict())
    mask = b["labels"] != IGNORE
    s = student(input_ids=b["input_ids"], output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t = teacher(input_ids=b["input_ids"], output_hidden_states=True, output_attentions=True)
    kd = KDLoss()(s.logits, t.logits, shift_labels(b["labels"])).loss
    hidden = mse(s, t, mask)
    attn = attention_kl(s.attentions, t.attentions, pairs, mask=mask)
    torch.testing.assert_close(parts["hidden"], hidden)
    torch.testing.assert_close(parts["attention"], attn)
    torch.testing.assert_close(parts["loss"], kd + 0.3 * hidden + 0.7 * attn, rtol=1e-5, atol=1e-6)
    parts["loss"].backward()
    assert all(p.grad is not None for p in terms["hidden"].parameters())


def test_teacher_in_lower_precision():
    teacher, student = pair("llama")
    module = DistillModule(student, teacher, teacher_dtype=torch.bfloat16)
    assert next(teacher.parameters()).dtype == torch.bfloat16
    parts = module.compute_loss(batch())
    assert parts["loss"].dtype == torch.float32 and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert all(p.grad.dtype == torch.float32 for p in student.parameters() if p.grad is not None)


def test_different_vocabularies_are_one_clear_line():
    torch.manual_seed(0)
    teacher, student = TINY["gpt_neox"](), TINY["gpt_neox"](vocab_size=VOCAB + 8)
    with pytest.raises(CapgapError, match=rf"{VOCAB} tokens but the student's has {VOCAB + 8}") as e:
        DistillModule(student, teacher)
    assert "\n" not in str(e.value)

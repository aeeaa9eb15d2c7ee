"""distill.progressive: the step → stage → trainable-blocks schedule; during an early stage the
upper blocks do not move (not even by weight decay) while the lower ones do; the early-stage loss
is the MSE of the top trainable block against its mapped teacher block; task=distill end to end."""

import csv

import lightning as L
import pytest
import torch
from conftest import VOCAB, tiny_gpt_neox
from omegaconf import OmegaConf
from test_study import config
from torch.utils.data import DataLoader

from capgap.data.blocks import IGNORE
from capgap.distill import progressive as prog
from capgap.distill.module import DistillModule
from capgap.runtime.errors import CapgapError
from capgap.tasks import run_task


def test_schedule_equal_shares_and_fractions():
    assert [prog.stage_at(s, 10, 2) for s in range(12)] == [0] * 5 + [1] * 7
    assert [prog.stage_at(s, 9, 3) for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [prog.stage_at(s, 10, 2, [0.2, 0.8]) for s in range(10)] == [0, 0] + [1] * 8
    assert [prog.stage_at(s, 10, 3, [0.1, 0.3, 0.6]) for s in range(10)] == [0, 1, 1, 1] + [2] * 6
    # groups are bottom-up and cover every block; the last stage trains them all
    assert prog.trainable_layers(0, 4, 2) == [0, 1] and prog.trainable_layers(1, 4, 2) == [0, 1, 2, 3]
    assert [prog.group_of(l, 5, 3) for l in range(5)] == [0, 0, 1, 1, 2]
    assert prog.trainable_layers(1, 5, 3) == [0, 1, 2, 3]
    assert [prog.top_layer(i, 4, 4) for i in range(4)] == [1, 2, 3, 4]
    assert prog.top_layer(0, 3, 2) == 2  # 3 blocks in 2 stages: the lower group has two
    for bad in [(0, 4, None), (5, 4, None), (2, 4, [0.5]), (2, 4, [0.7, 0.7])]:
        with pytest.raises(CapgapError, match="progressive"):
            prog.check(*bad)


def _batches(n, b=2, t=12):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (t,), generator=g)
        out.extend({"input_ids": ids, "labels": ids.clone()} for _ in range(b))
    return DataLoader(out, batch_size=b)


def progressive(student, teacher, stages, total_steps, **optim):
    """A DistillModule with the strategy as from_config builds it; (module, schedule callback)."""
    d = OmegaConf.create({"progressive": {"stages": stages}})
    s = prog.from_config(d, student, teacher, total_steps)
    module = DistillModule(student, teacher, terms=s.terms, callbacks=s.callbacks, total_steps=total_steps, **optim)
    return module, s.callbacks[0]


class Snapshot(L.Callback):
    def __init__(self, schedule):
        self.states, self.stages, self.schedule = {}, [], schedule

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.stages.append(self.schedule.stage)  # the stage this batch trained in
        self.states[trainer.global_step] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_early_stage_moves_only_the_lower_blocks():
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(num_hidden_layers=4)
    torch.manual_seed(1)
    student = tiny_gpt_neox(hidden_size=16, num_attention_heads=2, intermediate_size=48)  # narrower: projected
    before = {k: v.clone() for k, v in student.state_dict().items()}
    module, schedule = progressive(student, teacher, 2, 6, lr=1e-2, weight_decay=0.5,
                                   warmup_fraction=0.0, log_every=1)
    assert all(k.startswith(("model.", "terms.progressive0.")) for k in module.state_dict())
    snap = Snapshot(schedule)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=[snap])
    trainer.fit(module, _batches(6))
    assert snap.stages == [0, 0, 0, 1, 1, 1]

    def moved(state, prefix):
        return {k for k in state if k.startswith(prefix) and not torch.equal(state[k], before[k])}

    early = snap.states[3]  # after three steps of stage 0
    assert moved(early, "gpt_neox.layers.0.") and moved(early, "gpt_neox.embed_in")
    assert not moved(early, "gpt_neox.layers.1.")  # not by gradients, not by weight decay
    assert not moved(early, "gpt_neox.final_layer_norm") and not moved(early, "lm_head")
    final = snap.states[6]
    assert moved(final, "gpt_neox.layers.1.") and moved(final, "lm_head")


@pytest.mark.parametrize("narrow", [False, True], ids=["same_width", "narrower"])
def test_stage_loss_is_mse_of_top_block_against_mapped_teacher_block(narrow):
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(num_hidden_layers=6)
    torch.manual_seed(1)
    kw = dict(hidden_size=16, num_attention_heads=2, intermediate_size=48) if narrow else {}
    student = tiny_gpt_neox(num_hidden_layers=3, **kw)
    module, schedule = progressive(student, teacher, 3, 9)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    labels = ids.clone()
    labels[1, -4:] = IGNORE
    with torch.no_grad():
        s_h = student(input_ids=ids, output_hidden_states=True).hidden_states
        t_h = teacher(input_ids=ids, output_hidden_states=True).hidden_states
    mask = (labels != IGNORE).float()
    # uniform map of 3 student blocks onto 6 teacher blocks: 1 → 2, 2 → 4
    for stage, (s, t) in enumerate([(1, 2), (2, 4)]):
        schedule.apply(module, stage)
        proj = module.terms[f"progressive{stage}"].proj[0]
        want = (((proj(s_h[s]) - t_h[t]) ** 2).mean(-1) * mask).sum() / mask.sum()
        parts = module.compute_loss({"input_ids": ids, "labels": labels})
        torch.testing.assert_close(parts["loss"], want, rtol=1e-5, atol=1e-6)
        assert set(parts) == {"loss", f"progressive{stage}"}
    schedule.apply(module, 2)  # the last stage: the paper's loss over the whole model
    parts = module.compute_loss({"input_ids": ids, "labels": labels})
    assert set(parts) == {"loss", "ce", "kd"}


def test_task_distill_progressive_end_to_end(tmp_path):
    cfg = config(tmp_path, "task=distill", "distill=progressive", "student.size=250K", "prune.multiple=4",
                 "trainer.log_every_n_steps=1")
    m = run_task(cfg)
    assert m["steps"] == 16 and m["val_loss"] == m["val_loss"]  # finite, not NaN
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    stages = [float(r["train/stage"]) for r in rows if r.get("train/stage")]
    assert stages[0] == 0 and stages[-1] == 1 and stages == sorted(stages)
    assert any(r.get("train/progressive0") for r in rows) and any(r.get("train/kd") for r in rows)

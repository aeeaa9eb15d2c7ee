"""Data strategies: confidence selection keeps exactly the fraction and the most confident blocks,
hard mining trains on the sequences with the largest student-minus-teacher loss, the generated
transfer set is cached (a second run samples nothing). Each against an independent computation."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, tiny_gpt_neox
from test_distill_task import config, tiny_setup  # noqa: F401  (fixture)

import capgap.data.transfer as transfer
from capgap.data.blocks import IGNORE
from capgap.distill.hard import HardExamples, hardest, sequence_ce
from capgap.distill.losses import KDLoss
from capgap.distill.module import DistillModule
from capgap.tasks import run_task


def blocks(n=10, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    rows = [{"input_ids": x, "labels": x.clone()} for x in ids]
    rows[3]["labels"][8:] = IGNORE  # a padded last block: its padding must not count
    return rows


def test_most_confident_keeps_exactly_the_top_fraction():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6, 0.4, 0.05])
    keep = transfer.most_confident(scores, 0.3)
    assert keep.tolist() == sorted(sorted(range(10), key=lambda i: -scores[i])[:3]) == [1, 3, 5]
    assert len(transfer.most_confident(torch.rand(37), 0.5)) == round(0.5 * 37)


@pytest.mark.parametrize("by", ["max_prob", "neg_loss"])
def test_confidence_scores_match_a_per_sequence_loop(by):
    torch.manual_seed(0)
    model = tiny_gpt_neox()
    data = blocks()
    got = transfer.confidence_scores(model, data, batch_size=4, by=by)
    for i, row in enumerate(data):
        with torch.no_grad():
            p = torch.softmax(model(input_ids=row["input_ids"][None]).logits[0, :-1], -1)
        y = row["labels"][1:]
        n = int((y != IGNORE).sum())
        if by == "max_prob":
            want = p.max(-1).values[:n].mean()
        else:
            want = -F.cross_entropy(p.log(), y, ignore_index=IGNORE)
        assert got[i] == pytest.approx(float(want), rel=1e-4)


def test_sequence_ce_and_hardest_against_independent_formulas():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, VOCAB, bias=False)
    h = torch.randn(3, 5, 8)
    y = torch.randint(0, VOCAB, (3, 5))
    y[1, 3:] = IGNORE
    got = sequence_ce(h, head, y)
    for b in range(3):
        assert got[b] == pytest.approx(float(F.cross_entropy(head(h[b]), y[b], ignore_index=IGNORE)), rel=1e-5)
    gap = torch.tensor([0.1, -0.5, 2.0, 0.7, 0.3, 1.1])
    assert hardest(gap, 0.5).nonzero().squeeze(1).tolist() == [2, 3, 5]


def test_hard_mining_trains_on_the_sequences_the_student_lags_most():
    torch.manual_seed(0)
    teacher, student = tiny_gpt_neox(), tiny_gpt_neox(hidden_size=16, num_attention_heads=2)
    ids = torch.randint(0, VOCAB, (6, 10))
    batch = {"input_ids": ids, "labels": ids.clone()}
    module = DistillModule(student, teacher, KDLoss(alpha=0.5), select=HardExamples(0.5))
    parts = module.compute_loss(batch)
    # independently: full logits, per-sequence CE gap, top half, the plain KD loss on those rows
    with torch.no_grad():
        s_logits, t_logits = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    ce = lambda lg: torch.stack([F.cross_entropy(lg[b, :-1], ids[b, 1:]) for b in range(6)])
    gap = ce(s_logits) - ce(t_logits)
    top = torch.argsort(gap, descending=True)[:3]
    want = KDLoss(alpha=0.5)(s_logits[top, :-1], t_logits[top, :-1], ids[top, 1:])
    assert float(parts["loss"]) == pytest.approx(float(want.loss), rel=1e-4)
    assert float(parts["hard_gap"]) == pytest.approx(float(gap[top].mean()), rel=1e-4)


def test_confident_selection_through_the_task(tiny_setup, tmp_path):
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path / "run", "distill=confident", "distill.data_strategy.fraction=0.25",
                 "distill.tokens=128")
    m = run_task(cfg)
    from capgap.data.datamodule import CorpusDataModule
    from capgap.models.zoo import load_tokenizer
    dm = CorpusDataModule(load_tokenizer(cfg.teacher, cfg.paths.cache_dir), cfg.data, cfg.paths.cache_dir,
                          block_size=cfg.distill.block_size)
    dm.setup()
    assert m["transfer_blocks"] == round(0.25 * len(dm.train_set))


def test_generated_set_is_cached_and_a_second_run_samples_nothing(tiny_setup, tmp_path, monkeypatch):
    root, corpus = tiny_setup
    args = ("distill=generated", "distill.data_strategy.prompt_tokens=4", "distill.tokens=128")
    calls = []
    make = transfer.generate_blocks

    def counting(*a, **kw):
        out = make(*a, **kw)
        calls.append(out)
        return out

    monkeypatch.setattr(transfer, "generate_blocks", counting)
    first = run_task(config(root, corpus, tmp_path / "a", *args))
    assert first["transfer_generated"] and len(calls) == 1
    generated = calls[0]
    assert generated.shape == (first["transfer_blocks"], 16)  # distill.block_size, no padding
    cfg = config(root, corpus, tmp_path / "b", *args)
    second = run_task(cfg)
    assert not second["transfer_generated"] and len(calls) == 1
    cached = list((Path(cfg.paths.cache_dir) / "transfer").glob("*/blocks.pt"))
    assert cached and torch.equal(torch.load(cached[0]), generated)


def test_hard_preset_reaches_the_module(tiny_setup, tmp_path):
    from capgap.distill.config import from_config
    from capgap.runtime.errors import CapgapError
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path, "distill=hard", "distill.data_strategy.fraction=0.25",
                 "distill.loss.alpha=1.0")
    module = from_config(tiny_gpt_neox(), tiny_gpt_neox(), cfg.distill, total_steps=1)
    assert module.select.fraction == 0.25 and module.uses_teacher  # even with no KD term
    assert from_config(tiny_gpt_neox(), tiny_gpt_neox(), config(root, corpus, tmp_path).distill,
                       total_steps=1).select is None
    with pytest.raises(CapgapError, match="fraction=0"):
        from_config(tiny_gpt_neox(), tiny_gpt_neox(), config(root, corpus, tmp_path, "distill=hard",
                    "distill.data_strategy.fraction=0").distill, total_steps=1)
    with pytest.raises(CapgapError, match="distill.data_strategy.name"):
        transfer.strategy(config(root, corpus, tmp_path, "distill.data_strategy.name=easy").distill)

"""Teacher-assistant chains: each stage's teacher is the model the stage before distilled, sizes
shrink along the chain, the store row is against the real teacher; auto sizes at the ratio k."""

import pytest
from omegaconf import OmegaConf
from test_distill_task import config, tiny_setup  # noqa: F401  (fixture)

from capgap.distill import chain as chain_mod
from capgap.distill.module import DistillModule
from capgap.law.store import Store
from capgap.runtime.errors import CapgapError
from capgap.tasks import run_task


def test_chain_hands_each_distilled_model_to_the_next_stage(tiny_setup, tmp_path, monkeypatch):
    root, corpus = tiny_setup
    modules = []
    init = DistillModule.__init__

    def recording_init(self, student, teacher, *a, **kw):
        init(self, student, teacher, *a, **kw)
        modules.append(self)

    monkeypatch.setattr(DistillModule, "__init__", recording_init)
    cfg = config(root, corpus, tmp_path / "run", "prune.multiple=4", "student.size=18K",
                 "distill.chain=[30K,24K]", "distill.tokens=128")
    m = run_task(cfg)
    assert len(modules) == 3
    count = lambda model: sum(p.numel() for p in model.parameters())
    # stage i's teacher is stage i-1's distilled student, the very object
    for prev, nxt in zip(modules, modules[1:]):
        assert nxt.teacher is prev.model
    sizes = [count(mod.model) for mod in modules]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == m["student_params"]
    assert [s["params"] for s in m["chain"]] == sizes[:2]
    assert abs(sizes[0] - 30_000) < 3_000 and abs(sizes[1] - 24_000) < 3_000
    # sizes and sparsity are against the real teacher, not the last assistant
    assert m["teacher_params"] == count(modules[0].teacher) > sizes[0]
    assert m["chain"][0]["teacher_params"] == m["teacher_params"]
    assert (tmp_path / "run" / "assistant2").is_dir()


def test_auto_sizes_at_the_ratio_below_the_teacher():
    d = OmegaConf.create({"chain": None, "assistants": "auto"})
    assert chain_mod.assistant_sizes(d, 1_000_000, 10_000, ratio=lambda: 3.0) == [810_000, 270_000, 90_000, 30_000]
    # 2.5 by default
    assert chain_mod.assistant_sizes(d, 1_000_000, 10_000) == [976_562, 390_625, 156_250, 62_500, 25_000]
    assert chain_mod.assistant_sizes(OmegaConf.create({"assistants": None}), 10, 1) == []
    with pytest.raises(CapgapError, match="distill.chain"):
        chain_mod.assistant_sizes(OmegaConf.create({"chain": ["5K", "8K"]}), 10_000, 1_000)
    with pytest.raises(CapgapError, match="distill.chain"):
        chain_mod.assistant_sizes(OmegaConf.create({"chain": ["20K"]}), 10_000, 1_000)


def test_law_ratio_from_the_store_fit_else_default(tmp_path):
    url = str(tmp_path / "store.sqlite")
    assert chain_mod.law_ratio(url, 100) == chain_mod.DEFAULT_RATIO  # an empty store has no fit
    store = Store(url)
    # two student sizes, each best at teacher = 4·S (a V in log T, so the parabola's vertex is 4·S)
    for s in (100, 1000):
        for j, t in enumerate((2 * s, 4 * s, 8 * s)):
            store.record({"config_hash": f"{s}-{t}", "status": "done", "teacher": f"t{t}", "teacher_params": t,
                          "student_params": s, "seed": 0, "metric_name": "val_loss",
                          "metric": 1.0 + abs(j - 1)})
    assert chain_mod.law_ratio(url, 100) == pytest.approx(4.0, rel=0.1)
    assert chain_mod.law_ratio(url, 1000) == pytest.approx(4.0)


@pytest.mark.parametrize("budget", [["distill.tokens=0.25K"],
                                    ["distill.tokens=null", "distill.tokens_per_param=0.01"]])
def test_chain_stages_train_on_the_runs_token_budget(tiny_setup, tmp_path, budget):
    """distill.tokens as a size string, or null with a budget per parameter (the law presets):
    each assistant trains on the budget of its own size, as the student does on its own."""
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path / "run", "prune.multiple=4", "student.size=18K",
                 "distill.chain=[30K,24K]", *budget)
    m = run_task(cfg)
    per_step = 4 * 16  # distill.batch_size × block_size, one device, no accumulation
    expected = (lambda n: 250) if "distill.tokens=0.25K" in budget else (lambda n: round(0.01 * n))
    for stage in m["chain"]:
        assert stage["steps"] == -(-expected(stage["params"]) // per_step)
    assert m["tokens_planned"] == expected(m["student_params"])
    assert m["steps"] == -(-m["tokens_planned"] // per_step)


def test_law_ratio_reads_the_runs_own_study(tmp_path):
    url = str(tmp_path / "store.sqlite")
    store = Store(url)
    # the same grid in two studies: best at 4·S in "default", at 8·S in "wide"
    for study, best in (("default", 1), ("wide", 2)):
        for s in (100, 1000):
            for j, t in enumerate((2 * s, 4 * s, 8 * s, 16 * s)):
                store.record({"study": study, "config_hash": f"{study}-{s}-{t}", "status": "done",
                              "teacher": f"t{t}", "teacher_params": t, "student_params": s, "seed": 0,
                              "metric_name": "val_loss", "metric": 1.0 + abs(j - best)})
    assert chain_mod.law_ratio(url, 100, "wide") == pytest.approx(8.0, rel=0.1)
    assert chain_mod.law_ratio(url, 100) == pytest.approx(4.0, rel=0.1)
    assert chain_mod.law_ratio(url, 100, "absent") == chain_mod.DEFAULT_RATIO

"""The GPU study path, checked on CPU: the law presets compose at the paper's scale, `capgap
plan` prices every point, budgets are global tokens, bad trainer input is one line and exit 2
with nothing written, evaluation is chunked, and the teacher follows the training precision."""

import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, tiny_gpt_neox
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from capgap.commands import plan
from capgap.distill.module import DistillModule
from capgap.models.lm_loss import lm_loss
from capgap.runtime import budget
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import parse_size
from capgap.runtime.training import check_trainer
from capgap.tasks import run_task

ROOT = Path(__file__).resolve().parents[1]


def config(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("name, block", [("pythia_law", 2048), ("gpt2_law", 1024)])
def test_law_presets_are_the_papers_recipe_with_the_optimum_inside_the_grid(name, block):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    d = cfg.distill
    assert (d.block_size, d.lr, list(d.betas), d.weight_decay, d.warmup_fraction, d.min_lr_ratio) == \
        (block, 3e-4, [0.9, 0.95], 0.1, 0.01, 0.0)
    assert d.tokens is None and d.tokens_per_param == 20 and d.global_batch_tokens == 524288
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.data.name == "Skylion007/openwebtext"
    params = cfg.hydra.sweeper.params
    teachers = [config(f"teacher={t}").teacher.params for t in params.teacher.split(",")]
    for s in params["student.size"].split(","):
        assert min(teachers) <= 2.5 * parse_size(s) <= max(teachers), s
    # the CPU demo stays the default
    assert config().distill.tokens == 300000 and config().distill.block_size == 128


def test_plan_prints_every_point_and_a_total(capsys):
    assert plan.main(["experiment=pythia_law"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s*\d+ pythia_\S+\s+\S+\s+\S+\s+(\S+)\s+\S+\s+(\d+)\s+([\d.e+]+)\s+([\d.]+)$", out, re.M)
    assert len(rows) >= 20
    assert all(accum == "32" for _, accum, _, _ in rows)  # 0.5M tokens / (8 × 2048) on one GPU
    total = re.search(r"^total: (\d+) points trained \((\d+) skipped\), \S+ tokens, ([\d.e+]+) FLOPs, "
                      r"([\d,.]+) GPU-hours", out, re.M)
    assert total and int(total[1]) == len(rows) and int(total[1]) + int(total[2]) == 30
    flops = sum(float(f) for _, _, f, _ in rows)
    assert float(total[3]) == pytest.approx(flops, rel=1e-2)
    # GPU-hours are FLOPs over 40% of 989 TFLOP/s
    assert float(total[4].replace(",", "")) == pytest.approx(flops / (0.4 * 989e12) / 3600, abs=1)


def test_plan_flops_formula_on_one_point():
    (pt,) = plan.plan(["experiment=pythia_law", "teacher=pythia_410m", "student.size=120M"])
    s, t = 120_000_000, cfg_params("pythia_410m")
    steps = -(-20 * s // 524288)
    assert pt["tokens"] == steps * 524288
    assert pt["distill_flops"] == (6 * s + 2 * t) * pt["tokens"]
    assert pt["scoring_flops"] == 4 * t * 16 * 8 * 2048  # n_batches × batch × block, once


def cfg_params(name):
    return config(f"teacher={name}").teacher.params


def test_token_budget_from_tokens_or_per_parameter():
    from omegaconf import OmegaConf

    d = lambda **kw: OmegaConf.create({"tokens": None, "tokens_per_param": None, **kw})
    assert budget.token_budget(d(tokens="2K"), None) == 2000
    assert budget.token_budget(d(tokens=300000, tokens_per_param=20), 10) == 300000
    assert budget.token_budget(d(tokens_per_param=20), 1_000_000) == 20_000_000
    # a student sized by sparsity is not made yet: no budget, and no error either
    assert budget.token_budget(d(tokens_per_param=20), None) is None
    with pytest.raises(CapgapError, match="distill.tokens is null and distill.tokens_per_param is not set"):
        budget.token_budget(d(), 1_000_000)
    with pytest.raises(CapgapError, match="distill.tokens_per_param=-1 must be a positive number"):
        budget.token_budget(d(tokens_per_param=-1), 1_000_000)
    with pytest.raises(CapgapError, match="distill.tokens=lots"):
        budget.token_budget(d(tokens="lots"), None)


@pytest.mark.parametrize("overrides, message", [
    (["distill.tokens=null"], "distill.tokens is null and distill.tokens_per_param is not set"),
    (["distill.tokens=null", "distill.tokens_per_param=abc"], "distill.tokens_per_param=abc must be"),
])
def test_plan_without_a_token_budget_is_one_line_and_exit_2(capsys, overrides, message):
    from capgap.commands import cli

    assert cli.main(["plan", *overrides]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("capgap: error: ") and message in err[0], err


def test_plan_prices_a_budget_per_parameter_and_one_given_as_a_size():
    (per_param,) = plan.plan(["distill.tokens=null", "distill.tokens_per_param=20", "student.size=300K"])
    assert per_param["tokens"] == budget.steps_for(6_000_000, per_param["per_step"]) * per_param["per_step"]
    (sized,) = plan.plan(["distill.tokens=2K"])
    assert sized["tokens"] == budget.steps_for(2000, sized["per_step"]) * sized["per_step"]


def test_global_batch_sets_accumulation_and_refuses_what_devices_cannot_split():
    cfg = config("experiment=pythia_law", "trainer.devices=4")
    budget.apply_global_batch(cfg.trainer, 8, 2048, 524288)
    assert cfg.trainer.accumulate_grad_batches == 8
    assert budget.tokens_per_step(cfg.trainer, 8 * 2048) == 524288
    assert budget.steps_for(524288 * 3 + 1, 8 * 2048, cfg.trainer) == 4
    cfg = config("experiment=pythia_law", "trainer.devices=3")
    with pytest.raises(CapgapError, match=r"global_batch_tokens=524,288 is not a multiple .* 8 × 2048 × 3"):
        budget.apply_global_batch(cfg.trainer, 8, 2048, 524288)


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["trainer=fsdp"], "no CUDA device is visible .*trainer.accelerator=cpu shards over CPU processes",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU default runs here")),
    (["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=16-mixed"],
     "trainer=fsdp: trainer.precision=16-mixed is not one of 32-true, bf16-mixed"),
    (["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1", "distill=assistant"],
     "trainer=fsdp does not run teacher-assistant chains"),
    (["trainer=cpu", "trainer.devices=4096"], r"trainer.devices=4096 asks for 4096 devices but this machine has"),
    (["trainer=cpu", "distill.global_batch_tokens=1000"], "not a multiple of micro-batch"),
])
def test_bad_trainer_input_is_one_line_and_writes_nothing(tmp_path, overrides, message):
    cfg = config("task=study", f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}",
                 f"store.url={tmp_path / 'store.sqlite'}", *overrides)
    with pytest.raises(CapgapError, match=message) as e:
        run_task(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "store.sqlite").exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="trainer=fsdp's GPU default runs here")
def test_run_py_with_fsdp_without_cuda_exits_2_with_one_line_naming_the_cpu_override(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "trainer=fsdp", f"hydra.run.dir={tmp_path / 'h'}",
                        f"paths.cache_dir={tmp_path / 'cache'}", f"store.url={tmp_path / 's.sqlite'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("capgap: error:")]
    assert len(errors) == 1 and "CUDA" in errors[0] and "trainer.accelerator=cpu" in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "h" / "config_resolved.yaml").exists()


def test_fsdp_config_composes_with_the_sharding_strategy_and_runs_on_cpu_by_override(monkeypatch):
    from lightning.pytorch.strategies import ModelParallelStrategy

    cfg = config("trainer=fsdp")
    assert cfg.trainer.strategy._target_ == "capgap.runtime.sharding.fsdp_strategy"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert instantiate(cfg.trainer.strategy) == "auto"  # one process: nothing to shard over
    from capgap.runtime import distributed
    from capgap.runtime.distributed import Job, Topology

    monkeypatch.setattr(distributed, "_current", Job(Topology(0, 0, 0, 2, 2, "spawn")))
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (2, 1)
    check_trainer(config("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1").trainer)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_chunked_lm_loss_equals_the_full_logits_loss_in_value_and_gradient(arch):
    torch.manual_seed(0)
    model = TINY[arch]()
    ids = torch.randint(0, 96, (3, 20))
    labels = ids.clone()
    labels[1, 12:] = -100  # padding
    ref = model(input_ids=ids, labels=labels).loss
    ref.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, n = lm_loss(model, ids, labels, chunk_size=7)
    loss.backward()
    assert int(n) == 3 * 19 - 8
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, w in zip((p.grad for p in model.parameters()), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def _batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": x, "labels": x.clone()} for x in torch.randint(0, 96, (n, 2, 16), generator=g)]


def test_teacher_validation_is_the_teachers_own_loss():
    torch.manual_seed(0)
    teacher, student = tiny_gpt_neox(), tiny_gpt_neox(hidden_size=16, intermediate_size=32)
    module = DistillModule(student, teacher)
    data = _batches()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    res = trainer.validate(module, DataLoader(data, batch_size=None), verbose=False)[0]
    with torch.no_grad():
        want = sum(teacher(**b).loss for b in data) / len(data)  # equal-size batches, no padding
    assert res["val/teacher_loss"] == pytest.approx(float(want), rel=1e-5)


def test_teacher_follows_bf16_mixed_training_and_teacher_dtype_overrides():
    torch.manual_seed(0)
    for override, want in ((None, torch.bfloat16), (torch.float32, torch.float32)):
        teacher, student = tiny_gpt_neox(), tiny_gpt_neox(hidden_size=16, intermediate_size=32)
        module = DistillModule(student, teacher, teacher_dtype=override, total_steps=1)
        trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        trainer.fit(module, DataLoader(_batches(1), batch_size=None))
        assert next(teacher.parameters()).dtype == want
        assert next(student.parameters()).dtype == torch.float32  # master weights stay fp32

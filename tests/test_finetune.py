"""distill.finetune: after distillation a CE-only stage at lr·lr_scale, with no teacher forward,
its own checkpoint and log folders, and val_loss before/after in metrics.json."""

import json

import pytest
from test_distill_task import config, tiny_setup  # noqa: F401  (fixture)

import capgap.tasks.distill as distill_task
from capgap.pretrain.lm_module import CausalLMModule
from capgap.tasks import run_task


def test_finetune_stage_trains_with_ce_only_at_the_scaled_lr(tiny_setup, tmp_path, monkeypatch):
    root, corpus = tiny_setup
    calls = {"teacher": 0}
    seen = []  # (module type, teacher forwards so far, peak lr of the module)
    load = distill_task.load_teacher

    def counting_load(*args):
        teacher, tok = load(*args)
        base = teacher.base_model

        def hook(module, args, out):  # a student sliced by deepcopy carries the hook along
            calls["teacher"] += module is base

        base.register_forward_hook(hook)
        return teacher, tok

    def on_train_batch_start(self, batch, batch_idx):
        seen.append((type(self), calls["teacher"], self.lr,
                     self.trainer.optimizers[0].param_groups[0]["lr"]))

    monkeypatch.setattr(distill_task, "load_teacher", counting_load)
    monkeypatch.setattr(CausalLMModule, "on_train_batch_start", on_train_batch_start, raising=False)
    cfg = config(root, corpus, tmp_path / "run", "distill=finetune", f"distill.finetune.tokens={6 * 4 * 16}",
                 "distill.finetune.lr_scale=0.25")
    m = run_task(cfg)

    distill = [s for s in seen if s[0] is not CausalLMModule]
    ft = [s for s in seen if s[0] is CausalLMModule]
    assert len(distill) == 12 and len(ft) == 6 and m["steps"] == 12 and m["finetune_steps"] == 6
    # the distillation stage ran the teacher each step; fine-tuning never did
    assert distill[-1][1] > distill[0][1]
    assert len({s[1] for s in ft}) == 1
    assert all(s[2] == pytest.approx(cfg.distill.lr * 0.25) for s in ft)
    assert max(s[3] for s in ft) <= cfg.distill.lr * 0.25 + 1e-12
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val_loss"] == m["val_loss"] and saved["val_loss_distilled"] != saved["val_loss"]
    assert saved["finetune_lr"] == pytest.approx(cfg.distill.lr * 0.25)
    # its own log folder: the distillation CSV is still there beside it
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()
    assert (tmp_path / "run" / "finetune" / "csv" / "metrics.csv").is_file()


def test_finetune_off_by_default_and_bad_values_name_the_key(tiny_setup, tmp_path):
    from capgap.distill.finetune import finetune_settings
    from capgap.runtime.errors import CapgapError
    root, corpus = tiny_setup
    assert finetune_settings(config(root, corpus, tmp_path).distill) == (0, 0.1)
    with pytest.raises(CapgapError, match="distill.finetune.lr_scale"):
        finetune_settings(config(root, corpus, tmp_path, "distill.finetune.lr_scale=0").distill)

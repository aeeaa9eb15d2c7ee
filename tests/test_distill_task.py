"""task=distill end to end on a tiny teacher and a small local corpus: metrics and student in
the run dir, resume after a kill (exactness and SIGKILL: test_resume.py), NaN stops without
metrics, a vocabulary mismatch is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt_neox
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from capgap.data.bpe import train_bpe
from capgap.distill.module import DistillModule
from capgap.prune.slicing import load_pruned
from capgap.runtime.errors import CapgapError
from capgap.tasks import run_task

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]


def local_teacher(root, **teacher_kw):
    """A local corpus in `root` and a tiny GPT-NeoX teacher saved there with its BPE (vocab ~200);
    returns (root, corpus)."""
    g = torch.Generator().manual_seed(0)
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for i in range(80):
            n = int(torch.randint(30, 90, (1,), generator=g))
            text = f"doc {i}: " + " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g))
            f.write(json.dumps({"text": text}) + "\n")
    data = OmegaConf.create({"kind": "local", "path": str(corpus), "text_key": "text",
                             "val_fraction": 0.2, "max_tokens": None})
    tok = train_bpe(data, 200, root / "bpe")
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                            bos_token_id=tok.eos_token_id, **teacher_kw)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return root, corpus


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return local_teacher(tmp_path_factory.mktemp("distill"))


def overrides(root, corpus, run_dir, *extra):
    return [f"teacher.path={root / 'teacher'}", "data=local", f"data.path={corpus}",
            "data.val_fraction=0.2", "student=pruned", "prune=magnitude", "prune.sparsity=0.5",
            "trainer=cpu", "trainer.enable_progress_bar=false", "trainer.checkpoint_every=4",
            "trainer.val_check_interval=6", "trainer.log_every_n_steps=2", "logger=csv",
            "task=distill", "distill.batch_size=4", "distill.block_size=16",
            f"distill.tokens={12 * 4 * 16}", "distill.eval_batches=2", f"paths.run_dir={run_dir}",
            *extra]


def cli(root, corpus, run_dir, *extra):
    """`python run.py` arguments: Hydra's own folder (its log) in the run dir too, not the checkout."""
    return [*overrides(root, corpus, run_dir, *extra), f"hydra.run.dir={run_dir}"]


def config(*args):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides(*args))


class Killed(RuntimeError):
    pass


def test_distill_writes_metrics_and_a_loadable_student(tiny_setup, tmp_path):
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path / "run")
    m = run_task(cfg)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_loss"] == m["val_loss"]
    assert m["steps"] == 12 and not m["resumed"] and m["teacher_val_loss"] > 0
    assert m["student_params"] < m["teacher_params"]
    student = load_pruned(tmp_path / "run" / "student")
    assert (tmp_path / "run" / "student" / "tokenizer.json").is_file()
    assert sum(p.numel() for p in student.parameters()) == m["student_params"]
    # the checkpoint is gone once the run finished; the CSV log has every loss component
    assert not (Path(cfg.paths.cache_dir) / "checkpoints").exists() or \
        not any((Path(cfg.paths.cache_dir) / "checkpoints").iterdir())
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/ce", "train/kd", "train/lr", "train/grad_norm",
                "train/device/items_per_sec", "val/loss", "val/ppl", "val/teacher_loss"):
        assert key in header, key


def test_ce_only_through_the_task_still_reports_the_teachers_loss(tiny_setup, tmp_path):
    """The CE-only baseline trains without the teacher, but its run still reports the teacher's
    held-out loss beside the student's (docs/distillation.md's paper-loss vs CE-only comparison)."""
    root, corpus = tiny_setup
    m = run_task(config(root, corpus, tmp_path / "run", "distill=ce_only"))
    assert m["loss"] == "soft_ce" and m["alpha"] == 1.0
    assert m["teacher_val_loss"] > 0 and m["val_loss"] > 0


def test_killed_run_resumes_from_last_checkpoint(tiny_setup, tmp_path, monkeypatch):
    root, corpus = tiny_setup
    steps_seen, kill = [], [True]

    def on_train_batch_start(self, batch, batch_idx):
        steps_seen.append(self.global_step)
        if self.global_step == 6 and kill[0]:  # only the first run dies
            raise Killed("killed at step 6")

    monkeypatch.setattr(DistillModule, "on_train_batch_start", on_train_batch_start, raising=False)
    with pytest.raises(Killed):
        run_task(config(root, corpus, tmp_path / "first"))
    assert not (tmp_path / "first" / "metrics.json").exists()
    cfg = config(root, corpus, tmp_path / "second")  # the same command, a new run dir
    from capgap.tasks.distill import checkpoint_dir
    assert (checkpoint_dir(cfg) / "last.ckpt").is_file()
    steps_seen.clear()
    kill[0] = False
    m = run_task(cfg)
    assert m["resumed"] and m["steps"] == 12
    assert steps_seen[0] == 4  # restarted at the checkpoint of step 4, not from 0
    assert len(steps_seen) == 8


def test_nan_loss_stops_with_a_clear_error_and_no_metrics(tiny_setup, tmp_path, monkeypatch):
    root, corpus = tiny_setup
    compute = DistillModule.compute_loss

    def poisoned(self, batch):
        parts = compute(self, batch)
        if self.global_step >= 3:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(DistillModule, "compute_loss", poisoned)
    with pytest.raises(CapgapError, match="NaN or Inf by step 4") as e:
        run_task(config(root, corpus, tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_different_vocabularies_exit_2_with_one_line(tiny_setup, tmp_path):
    root, corpus = tiny_setup
    torch.manual_seed(0)
    n = len(json.loads((root / "teacher" / "tokenizer.json").read_text())["model"]["vocab"])
    other = tiny_gpt_neox(vocab_size=n + 8)
    other.save_pretrained(tmp_path / "other")
    args = cli(root, corpus, tmp_path / "run", "student=path", f"student.path={tmp_path / 'other'}")
    p = subprocess.run([sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "CAPGAP_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2, p.stderr
    # (transformers' own weight-loading bars may precede it; no traceback)
    lines = [l for l in p.stderr.splitlines() if "error" in l.lower() or "Traceback" in l]
    assert len(lines) == 1 and f"has {n} tokens but the student's has {n + 8}" in lines[0], p.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_intermediate_matching_through_the_task(tiny_setup, tmp_path):
    """distill=attention plus a hidden-state weight: both terms logged, the pruned (narrower)
    student's projections trained, and the student still saves as a plain student."""
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path / "run", "distill=attention", "distill.intermediate.hidden=0.5",
                 "distill.tokens=256")
    m = run_task(cfg)
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/hidden" in header and "train/attention" in header
    student = load_pruned(tmp_path / "run" / "student")
    assert sum(p.numel() for p in student.parameters()) == m["student_params"]

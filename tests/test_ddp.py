"""DDP on CPU (gloo): PrunerModule's scores from 2 processes equal 1 process's on the same
data; a 2-process distillation trains its budget in global tokens; a 2-job multirun with 2
processes per job runs each job once (never the sweep again per rank)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from capgap.data.bpe import train_bpe
from capgap.law.store import Store
from conftest import tiny_gpt_neox

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def test_pruner_scores_from_two_processes_equal_one(tmp_path):
    for devices in (1, 2):
        subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_scripts" / "score.py"), str(devices),
                        str(tmp_path / f"scores{devices}.pt")], cwd=tmp_path, env=env(), check=True,
                       capture_output=True, timeout=300)
    one, two = (torch.load(tmp_path / f"scores{d}.pt") for d in (1, 2))
    for key in ("heads", "neurons", "hidden"):
        assert one[key].abs().sum() > 0
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A local corpus and a tiny GPT-NeoX teacher saved with its BPE."""
    root = tmp_path_factory.mktemp("ddp")
    g = torch.Generator().manual_seed(0)
    with (root / "corpus.jsonl").open("w") as f:
        for i in range(80):
            n = int(torch.randint(30, 90, (1,), generator=g))
            words = " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g))
            f.write(json.dumps({"text": f"doc {i}: {words}"}) + "\n")
    data = OmegaConf.create({"kind": "local", "path": str(root / "corpus.jsonl"), "text_key": "text",
                             "val_fraction": 0.2, "max_tokens": None})
    tok = train_bpe(data, 200, root / "bpe")
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return root


def run_py(root, tmp_path, *args):
    common = [f"teacher.path={root / 'teacher'}", "data=local", f"data.path={root / 'corpus.jsonl'}",
              "data.val_fraction=0.2", "student=pruned", "prune=magnitude", "trainer=cpu",
              "trainer.devices=2", "trainer.enable_progress_bar=false", "logger=csv",
              "distill.batch_size=2", "distill.block_size=16", "distill.eval_batches=2",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *common], cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_with_accumulation_train_the_budget_in_global_tokens(setup, tmp_path):
    tokens = 1000
    p = run_py(setup, tmp_path, "task=distill", "prune.sparsity=0.5", "trainer.accumulate_grad_batches=2",
               f"distill.tokens={tokens}", f"paths.run_dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    per_step = 2 * 16 * 2 * 2  # micro-batch × block × devices × accumulation
    assert m["tokens_per_step"] == per_step and m["steps"] == -(-tokens // per_step)
    assert tokens <= m["tokens"] < tokens + per_step


@pytest.mark.slow
def test_multirun_with_two_processes_per_job_runs_each_job_once(setup, tmp_path):
    store = tmp_path / "store.sqlite"
    p = run_py(setup, tmp_path, "-m", "task=study", "student.size=25K,30K", "distill.tokens=512",
               f"store.url={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = Store(str(store)).results(None)
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    # one folder per job, each with its student: no rank ran the sweep again
    jobs = sorted(d.name for d in (tmp_path / "sweep").iterdir() if d.is_dir())
    assert len(jobs) == 2 and all((tmp_path / "sweep" / j / "student" / "config.json").is_file() for j in jobs)
    assert p.stdout.count("[capgap] distilled") == 2

"""Four study jobs started at once on an empty cache: the BPE is trained, the corpus tokenized,
the teacher pretrained and scored once (the other jobs wait and reuse), and every point ends
with the result of a sequential run of the same sweep."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capgap.law.store import Store

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["150K", "175K", "200K", "225K"]
COMMON = ["teacher=micro_xs", "teacher.pretrain_tokens=16384", "prune.multiple=1", "prune.n_batches=2",
          "distill.tokens=4096", "distill.batch_size=8", "distill.block_size=64", "distill.eval_batches=2",
          "trainer=cpu", "trainer.enable_progress_bar=false", "logger=csv"]


def env(cache):
    return {**os.environ, "CAPGAP_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def losses(store_path) -> dict:
    rows = Store(str(store_path)).results("done")
    return {r["student_params"]: r["metric"] for r in rows}


@pytest.mark.slow  # 4 jobs + a sequential sweep: 3.7 min on the shared 2-core machine
def test_four_jobs_at_once_build_each_cache_entry_once(tmp_path):
    cache, store = tmp_path / "cache", tmp_path / "store.sqlite"
    jobs = [subprocess.Popen([sys.executable, "run.py", *COMMON, f"student.size={size}", f"store.url={store}",
                              f"hydra.run.dir={tmp_path / 'runs' / size}"],
                             cwd=ROOT, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for size in SIZES]
    logs = [j.communicate(timeout=600)[0] for j in jobs]
    for j, log in zip(jobs, logs):
        assert j.returncode == 0, log
    built = re.findall(r"\[capgap\] built cache entry \S+/(tokenizers|tokens|teachers|scores)/", "\n".join(logs))
    assert sorted(built) == ["scores", "teachers", "tokenizers", "tokens"], built
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]

    # the same sweep, one job after another in one process, on its own cache
    seq_store = tmp_path / "seq.sqlite"
    p = subprocess.run([sys.executable, "run.py", "-m", *COMMON, f"student.size={','.join(SIZES)}",
                        f"store.url={seq_store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=ROOT, env=env(tmp_path / "seq_cache"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    parallel, sequential = losses(store), losses(seq_store)
    assert len(parallel) == len(SIZES) and parallel == sequential

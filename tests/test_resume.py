"""Exact resume: a run killed at any step and run again ends with the same student as a run
never interrupted (same weights bit for bit, same held-out loss), past epoch boundaries and
with dropout on; and two identical jobs never share a checkpoint folder."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_distill_task import local_teacher

from capgap.distill.module import DistillModule
from capgap.prune.slicing import load_pruned
from capgap.runtime.errors import CapgapError
from capgap.runtime.resume import claim
from capgap.tasks import run_task

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]
STEPS = 48  # 20 batches an epoch: the runs cross two epoch boundaries


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A local corpus and a tiny teacher with dropout (so the RNG state matters)."""
    return local_teacher(tmp_path_factory.mktemp("resume"), hidden_dropout=0.1, attention_dropout=0.1)


def overrides(root, corpus, run_dir, checkpoint_every=5):
    return [f"teacher.path={root / 'teacher'}", "data=local", f"data.path={corpus}",
            "data.val_fraction=0.2", "student=pruned", "prune=magnitude", "prune.sparsity=0.5",
            "trainer=cpu", "trainer.enable_progress_bar=false", f"trainer.checkpoint_every={checkpoint_every}",
            "trainer.val_check_interval=7", "trainer.log_every_n_steps=2", "logger=csv",
            "task=distill", "distill.batch_size=16", "distill.block_size=64",
            f"distill.tokens={STEPS * 16 * 64}", "distill.eval_batches=2", f"paths.run_dir={run_dir}"]


def config(*args):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides(*args))


def assert_same_student(a: Path, b: Path):
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["steps"] == mb["steps"] == STEPS
    assert abs(ma["val_loss"] - mb["val_loss"]) <= 1e-6, (ma["val_loss"], mb["val_loss"])
    sa, sb = load_pruned(a / "student").state_dict(), load_pruned(b / "student").state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"weights differ in {different}"
    return ma, mb


class Killed(RuntimeError):
    pass


def test_killed_run_ends_with_the_same_student(setup, tmp_path, monkeypatch):
    root, corpus = setup
    run_task(config(root, corpus, tmp_path / "whole"))
    steps_seen = []

    def on_train_batch_start(self, batch, batch_idx):
        steps_seen.append((self.global_step, batch["input_ids"][0, :4].tolist()))
        if self.global_step == 23 and kill:  # past the first epoch; last checkpoint at 20
            raise Killed("killed at step 23")

    kill = True
    monkeypatch.setattr(DistillModule, "on_train_batch_start", on_train_batch_start, raising=False)
    with pytest.raises(Killed):
        run_task(config(root, corpus, tmp_path / "first"))
    before = dict(steps_seen)
    steps_seen.clear()
    kill = False
    m = run_task(config(root, corpus, tmp_path / "second"))
    assert m["resumed"] and steps_seen[0][0] == 20
    # the resumed run sees the batches the killed one saw at those steps: the order went on
    assert [b for s, b in steps_seen if s in before] == [before[s] for s, _ in steps_seen if s in before]
    assert_same_student(tmp_path / "whole", tmp_path / "second")


def run_py(run_dir, cache, setup):
    root, corpus = setup
    env = {**os.environ, "CAPGAP_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # hydra.run.dir: its run.log goes to the test's folder, not outputs/ in the checkout
    return subprocess.Popen([sys.executable, "run.py", *overrides(root, corpus, run_dir, checkpoint_every=3),
                             f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_run_py_killed_by_sigkill_at_a_random_step_resumes_exactly(setup, tmp_path):
    """`python run.py` SIGKILLed after its k-th checkpoint (k random) and run again ends with
    the student of an uninterrupted `python run.py` (run beside it, in its own cache)."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checkpoints, delay = rng.randint(1, 6), rng.uniform(0, 0.1)
    whole = run_py(tmp_path / "whole", tmp_path / "cache_whole", setup)
    first = run_py(tmp_path / "a", tmp_path / "cache", setup)
    last, seen, stamp = None, 0, None
    deadline = time.time() + 240
    while seen < checkpoints and first.poll() is None and time.time() < deadline:
        last = last or next((tmp_path / "cache" / "checkpoints").glob("*/last.ckpt"), None) \
            if (tmp_path / "cache" / "checkpoints").is_dir() else None
        if last is not None and last.exists():
            st = last.stat()
            if (st.st_mtime_ns, st.st_ino) != stamp:
                stamp, seen = (st.st_mtime_ns, st.st_ino), seen + 1
        time.sleep(0.005)
    time.sleep(delay)
    assert first.poll() is None, f"the run ended before its kill (seed {seed}): {first.stdout.read()}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stdout.close()
    step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step < STEPS and not (tmp_path / "a" / "metrics.json").exists()
    second = run_py(tmp_path / "b", tmp_path / "cache", setup)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert "(resuming)" in out
    assert whole.communicate(timeout=300)[0] and whole.returncode == 0
    m, _ = assert_same_student(tmp_path / "b", tmp_path / "whole")
    assert m["resumed"], f"killed after checkpoint {checkpoints} (step {step}), seed {seed}"
    # a finished run deletes its checkpoint folder, leaving no temp file behind
    assert not [p for p in (tmp_path / "cache" / "checkpoints").rglob("*") if ".tmp-" in p.name]


def test_a_second_identical_job_stops_with_one_line(tmp_path):
    folder = tmp_path / "checkpoints" / "distill-abc"
    with claim(folder):
        with pytest.raises(CapgapError) as e:
            with claim(folder):
                pass
        assert "another job is running this same config" in str(e.value) and "\n" not in str(e.value)
    with claim(folder):  # released at the end of the run
        pass


def test_a_killed_holder_does_not_block_its_rerun(tmp_path):
    folder = tmp_path / "checkpoints" / "distill-abc"
    code = ("import sys, time; from capgap.runtime.resume import claim\n"
            "with claim(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(CapgapError):
        with claim(folder):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    with claim(folder):
        pass

"""Several processes on CPU (gloo), started as each launcher starts them: capgap's own spawn
(`trainer.devices=2`), srun (SLURM_* variables, 2 tasks) and two nodes (NODE_RANK,
MASTER_ADDR, one process each). Every stage gives the same cached content as one process,
every point ends with one student and one store row, a failing rank fails the point.

The tests in the default suite cover the launchers and the device-count independence; the
stage-by-stage matrix, micro pretraining, resume across a corpus pass and submitit are `slow`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt_neox
from omegaconf import OmegaConf

from capgap.data.bpe import train_bpe
from capgap.law.store import Store
from capgap.runtime.atomic import is_temp

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "ddp_scripts"
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]
# what a launcher (or the CI machine) may have set: each test says its own
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
                 "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "CAPGAP_JOB")


def env(**extra):
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    return {**base, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)]), "OMP_NUM_THREADS": "1",
            **{k: str(v) for k, v in extra.items()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 46-60 s: the run.py test below covers scoring on 2 processes in the default suite
def test_pruner_scores_from_two_processes_equal_one(tmp_path):
    # PrunerModule under Lightning's own DDP launcher (a script, no capgap job): the ranks' sums add up
    for devices in (1, 2):
        subprocess.run([sys.executable, str(SCRIPTS / "score.py"), str(devices),
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


def common(root, tmp_path, devices=2, corpus=None):
    return [f"teacher.path={root / 'teacher'}", "data=local", f"data.path={corpus or root / 'corpus.jsonl'}",
            "data.val_fraction=0.2", "student=pruned", "trainer=cpu", f"trainer.devices={devices}",
            "trainer.enable_progress_bar=false", "logger=csv", "distill.batch_size=2", "distill.block_size=16",
            "distill.eval_batches=2", "prune.batch_size=2", "prune.block_size=16", "prune.n_batches=5",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def start(root, tmp_path, *args, devices=2, corpus=None, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    flags = [a for a in args if a == "-m"]  # before the overrides, where Hydra's parser wants it
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *flags, *common(root, tmp_path, devices, corpus),
                             *[a for a in args if a != "-m"]],
                            cwd=tmp_path, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(procs, timeout=600):
    """Wait for every process; whatever is still running at the timeout is killed (its group too)."""
    out, deadline = [], time.time() + timeout
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1, deadline - time.time()))
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


def run_py(root, tmp_path, *args, devices=2, timeout=600, corpus=None, **extra):
    return finish([start(root, tmp_path, *args, devices=devices, corpus=corpus, **extra)], timeout)[0]


def clean_cache(cache: Path):
    """Nothing a later run would trip on: no checkpoint folder, no temp debris of a writer."""
    assert not (cache / "checkpoints").exists() or not any((cache / "checkpoints").iterdir())
    assert not [p for p in cache.rglob("*") if is_temp(p.name)]


def scores(cache: Path) -> dict:
    (entry,) = (cache / "scores").glob("*/scores.pt")
    return torch.load(entry)["raw"]


def test_two_processes_cache_and_evaluate_what_one_process_does(setup, tmp_path):
    """The same config on 1 and 2 processes: the same scores, the same student shape, the same
    held-out loss of the teacher (DDP's sampler padded 329 blocks to 330); the budget counts
    global tokens. With the global batch fixed, one process accumulates 4 micro-batches where
    two take 2 each of the same 4: the same steps, the same student, to float tolerance."""
    runs = {}
    for devices in (1, 2):
        where = tmp_path / f"d{devices}"
        rc, out, err = run_py(setup, where, "task=distill", "prune.sparsity=0.5", "distill.tokens=1000",
                              "distill.global_batch_tokens=128", f"paths.run_dir={where / 'run'}",
                              devices=devices)
        assert rc == 0, err[-3000:]
        runs[devices] = json.loads((where / "run" / "metrics.json").read_text())
        assert (where / "run" / "student" / "config.json").is_file()
        clean_cache(where / "cache")
    one, two = runs[1], runs[2]
    for key in ("heads", "neurons", "hidden"):
        torch.testing.assert_close(scores(tmp_path / "d2" / "cache")[key], scores(tmp_path / "d1" / "cache")[key],
                                   rtol=1e-5, atol=1e-9)
    assert one["student_params"] == two["student_params"]
    assert abs(one["teacher_val_loss"] - two["teacher_val_loss"]) < 1e-5
    per_step = 128  # micro-batch × block × devices × accumulation: 2 × 16 × 1 × 4 and 2 × 16 × 2 × 2
    for m in (one, two):
        assert m["tokens_per_step"] == per_step and m["steps"] == -(-1000 // per_step)
        assert 1000 <= m["tokens"] < 1000 + per_step
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-4, (one["val_loss"], two["val_loss"])


def study_sweep(store):
    return ["-m", "task=study", "student.size=25K,30K", "prune=magnitude", "distill.tokens=512", f"store.url={store}"]


def assert_two_points(tmp_path, store, outputs):
    for rc, out, err in outputs:
        assert rc == 0, err[-3000:]
    rows = Store(str(store)).results(None)
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    jobs = sorted(d for d in (tmp_path / "sweep").iterdir() if d.is_dir())
    assert len(jobs) == 2 and all((j / "student" / "config.json").is_file() for j in jobs)
    # rank 0 alone says it: no rank ran the sweep again, no rank > 0 wrote a report
    assert sum(out.count("[capgap] distilled") for _, out, _ in outputs) == 2
    clean_cache(tmp_path / "cache")


def test_slurm_tasks_run_a_two_job_multirun(setup, tmp_path):
    """Two tasks as srun starts them: SLURM_* variables, every task running the whole sweep."""
    store, port = tmp_path / "store.sqlite", free_port()
    slurm = dict(SLURM_NTASKS=2, SLURM_NNODES=1, SLURM_NTASKS_PER_NODE=2, SLURM_NODEID=0, SLURM_JOB_ID=4242,
                 SLURM_JOB_NAME="capgap-test", SLURM_NODELIST="127.0.0.1", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=port)
    procs = [start(setup, tmp_path, *study_sweep(store), SLURM_PROCID=r, SLURM_LOCALID=r, **slurm) for r in (0, 1)]
    assert_two_points(tmp_path, store, finish(procs))


def test_two_nodes_run_a_two_job_multirun(setup, tmp_path):
    """Two nodes of one process each, as a user starts them: NODE_RANK and node 0's address.
    The variables stay as the user set them, so the second job meets again."""
    store, port = tmp_path / "store.sqlite", free_port()
    procs = [start(setup, tmp_path, *study_sweep(store), "trainer.num_nodes=2", devices=1, NODE_RANK=n,
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for n in (0, 1)]
    assert_two_points(tmp_path, store, finish(procs))


def test_a_failing_rank_fails_the_point_and_ends_the_job(setup, tmp_path):
    store = tmp_path / "store.sqlite"
    t0 = time.time()
    rc, out, err = run_py(setup, tmp_path, "task=study", "student.size=25K", "prune=magnitude",
                          "distill.tokens=4096", f"store.url={store}",
                          "+trainer.callbacks=[{_target_: hooks.FailOnRank, rank: 1, step: 2}]", timeout=120)
    assert rc != 0
    assert time.time() - t0 < 90  # within a minute of the failure, not the process group's timeout
    (row,) = Store(str(store)).results(None)
    assert row["status"] == "failed" and "rank 1 failed" in row["error"] and "planted failure" in row["error"]
    assert "capgap: error: rank 1 failed: RuntimeError: planted failure" in err


STAGES = {
    "hidden": ["distill=hidden"],
    "attention": ["distill=attention"],
    "assistant-auto": ["distill=assistant"],
    "progressive": ["distill=progressive"],
    "confident": ["distill=confident"],
    "hard": ["distill=hard"],
    "generated": ["distill=generated", "distill.data_strategy.sequences=16"],
    "finetune": ["distill=finetune", "distill.finetune.tokens=256"],
    "layer-influence": ["prune=shortgpt"],
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_runs_on_two_processes(setup, tmp_path, stage):
    """Each distillation strategy (and expressiveness scoring, layer influence) as one study
    point on 2 processes: one student, one store row, nothing left to trip a later run."""
    store = tmp_path / "store.sqlite"
    rc, out, err = run_py(setup, tmp_path, "task=study", "student.size=25K", "distill.tokens=512",
                          f"store.url={store}", f"paths.run_dir={tmp_path / 'run'}", *STAGES[stage])
    assert rc == 0, err[-3000:]
    (row,) = Store(str(store)).results(None)
    assert row["status"] == "done" and row["metric"] > 0
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    assert out.count("[capgap] distilled") == 1
    clean_cache(tmp_path / "cache")


@pytest.mark.slow
def test_task_prune_writes_one_student_from_two_processes(setup, tmp_path):
    rc, out, err = run_py(setup, tmp_path, "task=prune", "prune.sparsity=0.5", f"paths.run_dir={tmp_path / 'run'}")
    assert rc == 0, err[-3000:]
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    assert (tmp_path / "run" / "prune_summary.txt").is_file()
    assert out.count("before distillation; saved") == 1
    clean_cache(tmp_path / "cache")


@pytest.mark.slow
def test_a_micro_teacher_pretrained_under_two_processes_is_the_one_process_teacher(tmp_path):
    """From a fresh cache: the same weights whatever the device count and the job's seed."""
    from safetensors.torch import load_file

    weights = {}
    for devices, seed in ((1, 0), (2, 1)):
        where = tmp_path / f"d{devices}"
        where.mkdir()
        p = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=pretrain", "teacher=micro_xs",
                            "teacher.pretrain_tokens=16384", "pretrain.eval_batches=2", "trainer=cpu",
                            f"trainer.devices={devices}", f"seed={seed}", "trainer.enable_progress_bar=false",
                            "logger=csv", f"paths.cache_dir={where / 'cache'}", f"hydra.run.dir={where / 'hydra'}"],
                           cwd=where, env=env(), capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        (f,) = (where / "cache" / "teachers").glob("micro_xs-*/model/model.safetensors")
        weights[devices] = load_file(f)
        clean_cache(where / "cache")
    assert weights[1].keys() == weights[2].keys()
    for k in weights[1]:
        torch.testing.assert_close(weights[2][k], weights[1][k], rtol=0, atol=0)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly_past_a_pass_of_the_corpus(setup, tmp_path):
    """SIGKILL (rank 0 and its child) after a checkpoint taken past the first pass over the
    training blocks; the rerun ends with the uninterrupted run's student."""
    from transformers import AutoTokenizer

    from capgap.data.datamodule import CorpusDataModule
    from capgap.prune.slicing import load_pruned

    # the first 20 documents: under 400 training blocks, less than 100 steps of 4 blocks
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("".join((setup / "corpus.jsonl").read_text().splitlines(keepends=True)[:20]))
    args = ["task=distill", "prune=magnitude", "prune.sparsity=0.5", "distill.tokens=9600",
            "trainer.checkpoint_every=20", "trainer.val_check_interval=30",
            "+trainer.callbacks=[{_target_: hooks.SlowAfter, step: 100, seconds: 0.3}]"]
    whole = start(setup, tmp_path / "whole", *args, f"paths.run_dir={tmp_path / 'whole' / 'run'}", corpus=corpus)
    first = start(setup, tmp_path / "a", *args, f"paths.run_dir={tmp_path / 'a' / 'run'}", corpus=corpus)
    deadline, step = time.time() + 300, 0
    try:
        while step < 100 and first.poll() is None and time.time() < deadline:
            for last in (tmp_path / "a" / "cache").glob("checkpoints/*/last.ckpt"):
                try:
                    step = torch.load(last, weights_only=True)["global_step"]
                except Exception:  # replaced while read
                    pass
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert 100 <= step < 150, f"no checkpoint past step 100 before the kill (last seen {step})"
    rc, out, err = run_py(setup, tmp_path / "a", *args, f"paths.run_dir={tmp_path / 'a' / 'run2'}", corpus=corpus)
    assert rc == 0, err[-3000:]
    assert "(resuming)" in out
    (rc_w, _, err_w), = finish([whole])
    assert rc_w == 0, err_w[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "a" / "run2", tmp_path / "whole" / "run"))
    assert a["resumed"] and a["steps"] == b["steps"] == 150
    assert abs(a["val_loss"] - b["val_loss"]) <= 1e-6, (a["val_loss"], b["val_loss"])
    sa, sb = (load_pruned(d / "student").state_dict() for d in (tmp_path / "a" / "run2", tmp_path / "whole" / "run"))
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    # the kill came after the stream had gone once through the training blocks (4 a step)
    data = OmegaConf.create({"kind": "local", "path": str(corpus), "text_key": "text",
                             "val_fraction": 0.2, "max_tokens": None})
    dm = CorpusDataModule(AutoTokenizer.from_pretrained(setup / "teacher"), data, tmp_path / "a" / "cache",
                          batch_size=2, block_size=16)
    dm.setup()
    assert 100 * 4 > len(dm.train_set)
    clean_cache(tmp_path / "a" / "cache")


@pytest.mark.slow
def test_submitit_local_launcher_runs_two_process_jobs(setup, tmp_path):
    """hydra/launcher=local (submitit): each job, in its own submitit process, starts its rank 1."""
    store = tmp_path / "store.sqlite"
    rc, out, err = run_py(setup, tmp_path, "-m", "hydra/launcher=local", "task=study", "student.size=25K,30K",
                          "prune=magnitude", "distill.tokens=512", f"store.url={store}")
    assert rc == 0, err[-3000:]
    rows = Store(str(store)).results(None)
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    clean_cache(tmp_path / "cache")


@pytest.mark.slow
def test_the_adaptive_sweep_runs_two_process_jobs(tmp_path):
    """hydra/sweeper=capgap_adaptive over two micro teachers (pretrained here, briefly) and two
    student sizes, each point on 2 processes: one store row and one student per point run."""
    store = tmp_path / "store.sqlite"
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "hydra/sweeper=capgap_adaptive",
                        "teacher=micro_xs,micro_s", "student.size=100K,200K", "seed=0",
                        "teacher.pretrain_tokens=16384", "pretrain.eval_batches=2", "prune=magnitude",
                        "prune.multiple=1", "distill.tokens=1024", "distill.eval_batches=2", "trainer=cpu", "trainer.devices=2",
                        "trainer.enable_progress_bar=false", "logger=csv", f"store.url={store}",
                        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = Store(str(store)).results(None)
    assert rows and all(r["status"] == "done" for r in rows)
    jobs = [d for d in (tmp_path / "sweep").iterdir() if (d / "metrics.json").is_file()]
    assert len(jobs) == len(rows) == p.stdout.count("[capgap] distilled")
    assert all((j / "student" / "config.json").is_file() for j in jobs)
    clean_cache(tmp_path / "cache")

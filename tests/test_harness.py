"""Downstream benchmarks through lm-evaluation-harness, offline, on a tiny local task
(tests/data/harness: multiple-choice items made from the embedded corpus, loaded through
include_path), on a uniform and a non-uniform student; the figures in metrics.json,
TensorBoard, the store row and the model card; `capgap fit --metric` on them; and the
mistakes a user makes with it, one `capgap: error:` line each."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from law_data import law_rows
from tiny_checkpoint import make_checkpoint, write_corpus

from capgap.commands.cli import main
from capgap.eval.harness import HIGHER_IS_BETTER, figures
from capgap.law.store import Store

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "harness"
TASK = "capgap_tiny_mc"
LIMIT = 8
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason='lm-eval is not installed (pip install -e ".[eval]")')


def test_figures_are_flat_and_carry_their_direction():
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                 "exact_match,strict-match": 0.25, "sample_len": 8}},
               "higher_is_better": {"t": {"acc": True, "exact_match": True}}}
    figs = figures(results)
    assert figs == {"harness/t/acc": 0.5, "harness/t/acc_stderr": 0.1,
                    "harness/t/exact_match/strict-match": 0.25,
                    HIGHER_IS_BETTER: {"harness/t/acc": True, "harness/t/exact_match/strict-match": True}}


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """A tiny teacher's uniform and non-uniform (globally ranked) students, saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capgap.models.adapters import adapter_for
    from capgap.prune.planner import make_plan
    from capgap.prune.scores import random_scores
    from capgap.prune.slicing import is_uniform, slice_model
    from capgap.tasks.prune import save_student

    root = tmp_path_factory.mktemp("harness")
    folder = make_checkpoint(root / "teacher", hidden=48)
    teacher, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    out = {}
    for ranking in ("uniform", "global"):
        scores = random_scores(teacher)
        scores.neurons[1] *= 0.1
        plan = make_plan(teacher, scores, sparsity=0.5, ranking=ranking)
        student = slice_model(teacher, plan)
        assert is_uniform(plan, adapter_for(student)) == (ranking == "uniform")
        out[ranking] = (student, save_student(student, plan, tokenizer, root / ranking))
    return out, tokenizer


def lm_eval_cli(folder: Path, out: Path) -> dict:
    """lm-eval's own CLI on a saved student, as a user runs it, in a fresh process (its
    trust_remote_code modules go to a temp folder)."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_MODULES_CACHE=str(out / "hf_modules"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                        f"pretrained={folder},trust_remote_code=True,dtype=float32", "--device", "cpu",
                        "--tasks", TASK, "--include_path", str(TASKS), "--limit", str(LIMIT),
                        "--batch_size", "8", "--output_path", str(out / "results")],
                       cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (result,) = (out / "results").rglob("results_*.json")
    return json.loads(result.read_text())["results"][TASK]


@needs_lm_eval
def test_harness_on_students_equals_lm_eval_on_their_folders(students, tmp_path):
    """The student object (before saving) scores what lm-eval scores on its folder, uniform
    and non-uniform; the non-uniform one through lm-eval's own CLI with trust_remote_code, as
    a user without capgap runs it (one CLI run: each costs half a minute here)."""
    from lm_eval.models.huggingface import HFLM

    from capgap.eval.harness import run_harness

    made, tokenizer = students
    for kind, (student, folder) in made.items():
        figs = run_harness(student, tokenizer, [TASK], include_path=str(TASKS), limit=LIMIT)
        acc = figs[f"harness/{TASK}/acc"]
        assert 0 <= acc <= 1 and figs[HIGHER_IS_BETTER][f"harness/{TASK}/acc"] is True
        if kind == "uniform":  # a stock folder: lm-eval's own loading, in this process
            from lm_eval import simple_evaluate
            from lm_eval.tasks import TaskManager

            lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=8)
            theirs = simple_evaluate(model=lm, tasks=[TASK], limit=LIMIT, log_samples=False,
                                     task_manager=TaskManager(include_path=str(TASKS), include_defaults=False)
                                     )["results"][TASK]
        else:
            theirs = lm_eval_cli(folder, tmp_path / kind)
        assert (acc, figs[f"harness/{TASK}/acc_norm"]) == (theirs["acc,none"], theirs["acc_norm,none"]), kind


def run(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAPGAP_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               CAPGAP_CACHE=str(cwd / "cache"), **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "trainer=cpu",
                           f"hydra.run.dir={cwd / 'run'}", f"hydra.sweep.dir={cwd / 'multirun'}",
                           f"store.url={cwd / 'store.sqlite'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def harness_args(*extra):
    return ["eval=harness", f"eval.tasks=[{TASK}]", f"eval.include_path={TASKS}", f"eval.limit={LIMIT}", *extra]


@needs_lm_eval
def test_study_with_the_harness_writes_its_figures_everywhere(tmp_path):
    """task=study eval=harness on a tiny local teacher and corpus: the figures reach
    metrics.json, TensorBoard, the store row and the student's model card."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher = make_checkpoint(tmp_path / "teacher", hidden=48)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    p = run(["task=study", f"teacher.path={teacher}", "data=local", f"data.path={corpus}",
             "data.val_fraction=0.1", "eval.block_size=32", "distill.block_size=32", "distill.batch_size=4",
             "distill.tokens=2000", "distill.eval_batches=2", "prune.n_batches=2", "prune.batch_size=4",
             "prune.block_size=32", "prune.sparsity=0.5", *harness_args()], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    key = f"harness/{TASK}/acc"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics[key] <= 1 and metrics["harness/higher_is_better"][key] is True
    (row,) = Store(str(tmp_path / "store.sqlite")).results()
    assert row["extra"][key] == metrics[key] and row["metric_name"] == "val_loss"
    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert events.Scalars(key)[-1].value == pytest.approx(metrics[key])
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert card.startswith("---\n") and f"| {TASK} | acc | {metrics[key]:.4f} |" in card
    assert "trust_remote_code=True" in card and "load_pruned" in card and metrics["config_hash"] in card


def test_fit_on_a_benchmark_figure_knows_higher_is_better(tmp_path, capsys):
    """A store whose rows carry an accuracy that peaks where the loss bottoms out: fitted on
    the accuracy, with the direction the rows recorded, the law is the loss's law."""
    store = Store(str(tmp_path / "s.sqlite"))
    key = "harness/mc/acc"
    for r in law_rows(seeds=1):
        store.record(dict(r, extra={key: 4.0 - r["metric"], HIGHER_IS_BETTER: {key: True}}))
    url = str(tmp_path / "s.sqlite")
    assert main(["fit", "--store", url, "--metric", key, "--out", str(tmp_path / "acc"), "--bootstrap", "50"]) == 0
    assert main(["fit", "--store", url, "--out", str(tmp_path / "loss"), "--bootstrap", "50"]) == 0
    acc, loss = (json.loads((tmp_path / d / "fit.json").read_text()) for d in ("acc", "loss"))
    assert acc["higher_is_better"] is True and acc["law"]["a"] == pytest.approx(loss["law"]["a"], rel=1e-3)
    assert acc["law"]["a"] == pytest.approx(2.5, rel=0.05)
    assert "harness/mc/acc" in capsys.readouterr().out


# mistake: (overrides, what the line must say, extra environment)
MISTAKES = {
    "unknown task": (["eval=harness", "eval.tasks=[no_such_task_xyz]"],
                     "eval.tasks: no_such_task_xyz is not an lm-evaluation-harness task", {}),
    "task data not reachable offline": (["eval=harness", "eval.tasks=[capgap_offline_mc]"],
                                        "eval.tasks: the data of task capgap_offline_mc cannot be loaded", {}),
    "no tasks": (["eval=harness"], "eval.tasks is empty", {}),
    "lm-eval missing": (["eval=harness", f"eval.tasks=[{TASK}]"], "needs lm-evaluation-harness", {}),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("mistakes")
    tasks = base / "tasks"  # a task whose data lives on the hub: unreachable offline
    tasks.mkdir()
    (tasks / "offline.yaml").write_text(
        "task: capgap_offline_mc\ndataset_path: capgap-tests/not-on-this-machine\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n")
    shadow = base / "shadow"  # a python path on which lm_eval cannot be imported
    (shadow / "lm_eval").mkdir(parents=True)
    (shadow / "lm_eval" / "__init__.py").write_text("raise ImportError('lm_eval hidden by the test')\n")
    return {"teacher": make_checkpoint(base / "teacher"), "corpus": write_corpus(base / "corpus.jsonl"),
            "tasks": tasks, "shadow": shadow}


# every mistake through task=evaluate; task=study checks the same way, before its store opens
CASES = [(name, "evaluate") for name in MISTAKES] + [("unknown task", "study")]


@pytest.mark.parametrize("name,task", CASES)
def test_a_harness_mistake_is_one_line(name, task, world, tmp_path):
    if name != "lm-eval missing" and importlib.util.find_spec("lm_eval") is None:
        pytest.skip('lm-eval is not installed (pip install -e ".[eval]")')
    overrides, says, _ = MISTAKES[name]
    include = [f"eval.include_path={world['tasks']}"] if name == "task data not reachable offline" else []
    env = {"PYTHONPATH": str(world["shadow"])} if name == "lm-eval missing" else {}
    p = run([f"task={task}", f"teacher.path={world['teacher']}", "data=local", f"data.path={world['corpus']}",
             "data.val_fraction=0.1", "eval.block_size=32", *overrides, *include], tmp_path, env)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("capgap: error:")]
    assert len(errors) == 1 and says in errors[0], p.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "student").exists()
    store = tmp_path / "store.sqlite"
    assert not store.exists() or Store(str(store)).results(None) == []


def test_capgap_reads_a_student_tokenizer_without_running_or_asking_about_its_code(students, capsys):
    """AutoTokenizer reads config.json, which names a non-uniform student's modeling file:
    capgap gives it the family's config instead, so it neither runs the folder's code nor
    asks in the terminal whether to."""
    from capgap.models.zoo import load_local, load_local_tokenizer
    from capgap.runtime.errors import CapgapError

    made, tokenizer = students
    folder = made["global"][1]
    assert load_local_tokenizer(folder).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(CapgapError, match="custom code"):  # as a teacher: refused, not run
        load_local(folder)
    out = capsys.readouterr()
    assert "Do you wish to run the custom code" not in out.out + out.err

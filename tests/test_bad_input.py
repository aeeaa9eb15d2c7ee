"""Every user mistake in the table of docs/store-and-reliability.md ("## Errors"), as a user
makes it: through `python run.py` or `capgap` in a subprocess. Each must exit 2 with exactly
one `capgap: error:` line on stderr, no traceback, and write nothing (no store row, no
metrics.json, no student folder, no fit).

Every error fires before any training: the local teacher is a tiny random checkpoint and
the corpus a few hundred short documents, so each case costs about one interpreter start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from law_data import law_rows
from tiny_checkpoint import make_checkpoint, write_corpus

from capgap.law.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the cases point at: two tiny checkpoints with different vocabularies, corpora,
    and stores good, pooled and corrupt."""
    base = tmp_path_factory.mktemp("world")
    w = {"teacher": make_checkpoint(base / "teacher"),
         "other": make_checkpoint(base / "other", vocab_size=260),
         "corpus": write_corpus(base / "corpus.jsonl"),
         "empty": base / "empty.txt", "bad_csv": base / "r.csv", "corrupt": base / "broken.sqlite"}
    w["empty"].write_text("\n  \n")
    w["bad_csv"].write_text("teacher_params,metric\n1e8,3.0\n")
    w["corrupt"].write_bytes(os.urandom(4096))

    rows = [dict(r, study="micro_law", config={"distill": {"tokens": 1000 if i % 2 else 4000},
                                               "teacher": {"name": r["teacher"]}})
            for i, r in enumerate(law_rows(seeds=1))]
    w["pooled"] = base / "pooled.sqlite"
    store = Store(str(w["pooled"]))
    for r in rows:
        store.record(r)
    return w


def local(w, *extra):
    return ["task=evaluate", f"teacher.path={w['teacher']}", "data=local",
            f"data.path={w['corpus']}", "data.val_fraction=0.1", "eval.block_size=32", *extra]


# name: (tool, arguments, what the line must say); `store=postgres` cases set no store.url
CASES = {
    "unknown teacher": ("run.py", lambda w: ["teacher=pythia_7b"], "teacher=pythia_7b is not a known teacher"),
    "unknown task": ("run.py", lambda w: ["task=train"], "task=train is not one of"),
    "missing checkpoint path": ("run.py", lambda w: ["task=evaluate", "teacher.path=/nonexistent/ckpt"],
                                "teacher.path=/nonexistent/ckpt does not exist"),
    "empty corpus": ("run.py", lambda w: local(w, f"data.path={w['empty']}"), "empty corpus"),
    "block longer than the corpus": ("run.py", lambda w: local(w, "eval.block_size=100000"),
                                     "eval.block_size=100000 is longer than"),
    "sparsity out of range": ("run.py", lambda w: local(w, "task=prune", "prune=magnitude",
                                                        "prune.sparsity=1.5"),
                              "prune.sparsity=1.5 is outside [0, 1)"),
    "student not below teacher": ("run.py", lambda w: local(w, "task=prune", "student.size=10M"),
                                  "student.size=10M is not below the teacher's"),
    "bad size string": ("run.py", lambda w: ["student.size=lots"],
                        "student.size=lots: size 'lots' is not a parameter count"),
    "tokenizer mismatch": ("run.py", lambda w: local(w, "task=distill", "student=path",
                                                     f"student.path={w['other']}"),
                           "teacher vocabulary has 257 tokens but the student's has 260"),
    "unknown loss name": ("run.py", lambda w: local(w, "task=distill", "student=scratch",
                                                    "distill.loss.name=kl2"),
                          "distill.loss.name='kl2' is unknown"),
    "unreachable hub": ("run.py", lambda w: ["task=evaluate", "teacher=pythia_410m"],
                        "the model hub is unreachable"),
    "postgres without URL": ("run.py", lambda w: ["store=postgres"],
                             "store=postgres needs CAPGAP_STORE_URL"),
    "corrupt store": ("capgap", lambda w: ["report", "--store", str(w["corrupt"])],
                      "broken.sqlite is not a readable database"),
    "unknown study": ("capgap", lambda w: ["fit", "--store", str(w["pooled"]), "--study", "micro_lw"],
                      "study 'micro_lw' is not in store"),
    "pooled configs": ("capgap", lambda w: ["fit", "--store", str(w["pooled"])],
                       "differ in more than teacher, student size and seed: distill.tokens: 1000, 4000"),
    "results CSV without a column": ("capgap", lambda w: ["fit", "--csv", str(w["bad_csv"])],
                                     "lacks column student_params"),
    "bad size flag": ("capgap", lambda w: ["predict", "--student", "12Q"],
                      "--student 12Q: size '12Q' is not a parameter count"),
}


def written(folder: Path) -> list[str]:
    """What a failed command must not have left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name in ("metrics.json", "fit.json") or (p.is_dir() and p.name in ("student", "checkpoints")))


TEST = "test_a_mistake_is_one_line_exit_2_and_writes_nothing"


def run_case(name: str, w: dict, folder: Path) -> subprocess.CompletedProcess:
    tool, args, _ = CASES[name]
    args = args(w)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAPGAP_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               CAPGAP_CACHE=str(folder / "cache"))
    if tool == "run.py":
        cmd = [sys.executable, str(ROOT / "run.py"), *args, "trainer=cpu", f"hydra.run.dir={folder / 'run'}",
               f"hydra.sweep.dir={folder / 'multirun'}"]
        if "store=postgres" not in args:
            cmd.append(f"store.url={folder / 'store.sqlite'}")
    else:
        cmd = [sys.executable, "-m", "capgap.commands.cli", *args]
        if args[0] == "fit":
            cmd += ["--out", str(folder / "fit")]
        elif args[0] == "predict":
            cmd += ["--store", str(folder / "store.sqlite")]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(world, request, tmp_path_factory):
    """The selected cases, run up front two at a time: each is mostly one interpreter's
    start-up and imports, one core's work, so a 2-core machine runs them in half the time."""
    names = [item.callspec.params["name"] for item in request.session.items
             if item.originalname == TEST and hasattr(item, "callspec")]
    folders = {name: tmp_path_factory.mktemp("case") for name in names}
    rows = len(Store(str(world["pooled"])).results(None))
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(names, pool.map(lambda n: run_case(n, world, folders[n]), names)))
    return {n: (done[n], folders[n]) for n in names}, rows


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_is_one_line_exit_2_and_writes_nothing(name, world, outcomes):
    results, pooled_rows = outcomes
    out, folder = results[name]
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("capgap: error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert CASES[name][2] in errors[0], errors[0]
    assert written(folder) == []
    store = folder / "store.sqlite"
    assert not store.exists() or Store(str(store)).results(None) == []
    assert len(Store(str(world["pooled"])).results(None)) == pooled_rows


def test_the_docs_list_every_case():
    """The table of mistakes in docs/store-and-reliability.md and this file's cases are the
    same list."""
    page = (ROOT / "docs" / "store-and-reliability.md").read_text()
    section = page.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("|")[1].strip() for line in section.splitlines()
              if line.startswith("| ") and not line.startswith("| mistake")]
    assert sorted(listed) == sorted(CASES), set(listed) ^ set(CASES)
    assert len(CASES) >= 15

"""`capgap`: the happy path, and one clear line with exit 2 for each user mistake."""

import json
import os
import subprocess
import sys

import pytest
from law_data import law_rows

from capgap.cli import main
from capgap.law.store import Store


def fill(path, rows):
    store = Store(str(path))
    for row in rows:
        store.record(row)
    return str(path)


def test_fit_predict_report_export(tmp_path, capsys):
    url = fill(tmp_path / "s.sqlite", law_rows(seeds=2))
    assert main(["fit", "--store", url, "--out", str(tmp_path / "fit"), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "paper: T* = 2.498·S" in out and "fit.json" in out
    assert json.loads((tmp_path / "fit" / "fit.json").read_text())["law"]["a"] == pytest.approx(2.5, rel=0.05)
    assert (tmp_path / "fit" / "law.png").exists()

    assert main(["predict", "--student", "100M", "--store", url]) == 0
    assert "95% CI" in capsys.readouterr().out

    assert main(["report", "--store", url]) == 0
    assert f"{len(law_rows(seeds=2))} done" in capsys.readouterr().out

    assert main(["export", "--store", url, "--csv", str(tmp_path / "r.csv")]) == 0
    assert main(["fit", "--csv", str(tmp_path / "r.csv"), "--out", str(tmp_path / "f2")]) == 0


def test_predict_without_results_says_it_uses_the_paper(tmp_path, capsys):
    assert main(["predict", "--student", "3B", "--store", str(tmp_path / "none.sqlite")]) == 0
    assert "paper's fit" in capsys.readouterr().out


def _corrupt(tmp_path):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(os.urandom(4096))
    return ["fit", "--store", str(path)], "broken.sqlite"


def _missing_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("teacher_params,metric\n1e8,3.0\n")
    return ["fit", "--csv", str(path)], "lacks column student_params"


def _empty(tmp_path):
    return ["fit", "--store", fill(tmp_path / "e.sqlite", [])], "no finished runs"


def _single_teacher(tmp_path):
    rows = [r for r in law_rows() if r["teacher"] == law_rows()[-1]["teacher"]]
    return ["fit", "--store", fill(tmp_path / "t.sqlite", rows)], "only one teacher"


def _single_student(tmp_path):
    rows = [r for r in law_rows() if r["student_params"] == 50_000_000]
    return ["fit", "--store", fill(tmp_path / "s.sqlite", rows)], "only one student size"


def _too_few_for_the_joint_fit(tmp_path):
    teachers = sorted({r["teacher_params"] for r in law_rows()})
    rows = [r for r in law_rows(seeds=1) if (r["student_params"], r["teacher_params"]) in
            {(20_000_000, t) for t in teachers[4:7]} | {(50_000_000, t) for t in teachers[5:7]}]
    return ["fit", "--store", fill(tmp_path / "f.sqlite", rows)], "too few points for the joint fit"


def _unknown_model(tmp_path):
    return ["fit", "--store", fill(tmp_path / "m.sqlite", law_rows(seeds=1)), "--model", "linear"], \
        "--model linear is not a law model"


@pytest.mark.parametrize("case", [_corrupt, _missing_column, _empty, _single_teacher,
                                  _single_student, _too_few_for_the_joint_fit, _unknown_model])
def test_mistakes_give_one_line(case, tmp_path, capsys):
    argv, says = case(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("capgap: error: ") and err.count("\n") == 1 and says in err


def test_console_script_exits_2_without_traceback(tmp_path):
    argv, says = _corrupt(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "capgap.cli", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and says in proc.stderr


def test_law_commands_never_import_torch(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("teacher_params,student_params,metric\n" + "".join(
        f"{r['teacher_params']},{r['student_params']},{r['metric']}\n" for r in law_rows(seeds=1)))
    code = ("import sys; from capgap.cli import main; "
            f"rc = main(['fit', '--csv', {str(csv)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(rc, 'torch' in sys.modules, 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stderr


def test_law_package_and_sweeper_import_no_torch():
    code = ("import sys, pkgutil, importlib, capgap.law as law; "
            "[importlib.import_module(f'capgap.law.{m.name}') for m in pkgutil.iter_modules(law.__path__)]; "
            "importlib.import_module('hydra_plugins.capgap_adaptive_sweeper.adaptive_sweeper'); "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr

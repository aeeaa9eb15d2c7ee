"""`capgap`: the happy path, and one clear line with exit 2 for each user mistake."""

import json
import os
import subprocess
import sys

import pytest
from law_data import law_rows, with_config

from capgap.commands.cli import main
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


def test_studies_are_fitted_apart(tmp_path, capsys):
    url = fill(tmp_path / "s.sqlite", with_config(law_rows(seeds=1)) +
               with_config(law_rows(seeds=1, a=1.5, rng_seed=1), study="other"))
    assert main(["report", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "studies (2): default: " in out and "; other: " in out
    assert main(["report", "--store", url, "--study", "other"]) == 0
    assert f"{len(law_rows(seeds=1, a=1.5))} done" in capsys.readouterr().out

    for study, a in (("default", 2.5), ("other", 1.5)):
        out = tmp_path / study
        assert main(["fit", "--store", url, "--study", study, "--out", str(out), "--bootstrap", "50"]) == 0
        assert json.loads((out / "fit.json").read_text())["law"]["a"] == pytest.approx(a, rel=0.05)
    capsys.readouterr()
    assert main(["predict", "--student", "100M", "--store", url, "--study", "other"]) == 0
    assert "your fit" in capsys.readouterr().out
    assert main(["export", "--store", url, "--study", "other", "--csv", str(tmp_path / "o.csv")]) == 0
    assert (tmp_path / "o.csv").read_text().count("\n") == len(law_rows(seeds=1, a=1.5)) + 1


def test_group_by_splits_what_cannot_be_pooled(tmp_path, capsys):
    rows = (with_config(law_rows(seeds=1), distill__tokens=1000)
            + [dict(r, config_hash=r["config_hash"] + "-long")
               for r in with_config(law_rows(seeds=1, a=1.5, rng_seed=1), distill__tokens=4000)])
    url = fill(tmp_path / "s.sqlite", rows)
    assert main(["fit", "--store", url, "--out", str(tmp_path / "fit"), "--bootstrap", "50",
                 "--group-by", "distill.tokens"]) == 0
    out = capsys.readouterr().out
    assert "== distill.tokens=1000" in out and "== distill.tokens=4000" in out
    law = {n: json.loads((tmp_path / "fit" / f"distill.tokens={n}" / "fit.json").read_text())["law"]
           for n in (1000, 4000)}
    assert law[1000]["a"] == pytest.approx(2.5, rel=0.05) and law[4000]["a"] == pytest.approx(1.5, rel=0.05)
    assert not (tmp_path / "fit" / "fit.json").exists()


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



def _unknown_study(tmp_path):
    return (["fit", "--store", fill(tmp_path / "u.sqlite", with_config(law_rows(seeds=1))),
             "--study", "micro_lw"], "study 'micro_lw' is not in store")


def _two_studies_no_choice(tmp_path):
    rows = with_config(law_rows(seeds=1)) + with_config(law_rows(seeds=1), study="micro_law")
    return ["fit", "--store", fill(tmp_path / "two.sqlite", rows)], "holds studies default"


def _pooled(tmp_path):
    rows = with_config(law_rows(seeds=1), distill__tokens=1000)
    rows[3]["config"]["distill"]["tokens"] = 4000
    rows[5]["config"]["trainer"]["precision"] = "bf16-mixed"
    rows[5]["config"]["data"] = {"kind": "local", "path": "/x"}
    url = fill(tmp_path / "p.sqlite", rows)
    return (["fit", "--store", url], "differ in more than teacher, student size and seed: "
            "data.kind: 'local', unset; data.path: '/x', unset; distill.tokens: 1000, 4000; "
            "trainer.precision: '32', 'bf16-mixed'; split them with --group-by data.kind")


def _group_by_typo(tmp_path):
    url = fill(tmp_path / "g.sqlite", with_config(law_rows(seeds=1)))
    return ["fit", "--store", url, "--group-by", "distill.tokenz"], "--group-by distill.tokenz: no row"


@pytest.mark.parametrize("case", [_corrupt, _missing_column, _empty, _single_teacher,
                                  _single_student, _too_few_for_the_joint_fit, _unknown_model,
                                  _unknown_study, _two_studies_no_choice, _pooled, _group_by_typo])
def test_mistakes_give_one_line(case, tmp_path, capsys):
    argv, says = case(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("capgap: error: ") and err.count("\n") == 1 and says in err


def test_console_script_exits_2_without_traceback(tmp_path):
    argv, says = _corrupt(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "capgap.commands.cli", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and says in proc.stderr


def test_law_commands_never_import_torch(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("teacher_params,student_params,metric\n" + "".join(
        f"{r['teacher_params']},{r['student_params']},{r['metric']}\n" for r in law_rows(seeds=1)))
    code = ("import sys; from capgap.commands.cli import main; "
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

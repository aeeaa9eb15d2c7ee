"""The distillation-scaling model (Busbridge et al. 2025, eq. 8): fitted to data drawn from
its own form with known constants it predicts within 1%; what a store lacks is one line."""

import csv

import numpy as np
import pytest

from capgap.commands.cli import main
from capgap.law.distillation import fit_distillation, predict_loss
from capgap.law.points import Points, points_from_rows
from capgap.runtime.errors import CapgapError

# constants chosen so that some students show the capacity gap inside the teachers measured
TRUE = {"E": 1.7, "A": 300.0, "B": 900.0, "alpha": 0.35, "beta": 0.3, "c0": 2.0, "c1": 1.2,
        "d1": 1.1, "f1": 0.8, "A'": 800.0, "B'": 1600.0, "alpha'": 0.3, "beta'": 0.25, "gamma'": 1.0}
TEACHERS = {70e6: 3.6, 160e6: 3.3, 410e6: 3.0, 1e9: 2.75, 1.4e9: 2.6, 2.8e9: 2.4}  # params: loss


def rows(noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for t, lt in TEACHERS.items():
        for s in np.geomspace(20e6, 500e6, 5):
            for d in (1e9, 4e9, 16e9):
                loss = float(predict_loss(TRUE, lt, s, d)) * (1 + rng.normal(0, noise))
                out.append(dict(teacher_params=t, student_params=round(s), tokens=d, seed=0,
                                metric_name="val_loss", metric=loss, extra={"val/teacher_loss": lt}))
    return out


def test_predictions_within_one_percent_of_the_truth():
    model = fit_distillation(points_from_rows(rows(), "planted"))
    rng = np.random.default_rng(1)  # held-out points inside the measured ranges
    lt, s, d = rng.uniform(2.4, 3.6, 300), np.exp(rng.uniform(np.log(20e6), np.log(500e6), 300)), \
        np.exp(rng.uniform(np.log(1e9), np.log(16e9), 300))
    err = np.abs(model.predict(lt, s, d) / predict_loss(TRUE, lt, s, d) - 1)
    print(f"\nheld-out relative error: max {100 * err.max():.3f}%, mean {100 * err.mean():.3f}%; "
          f"fit R² {model.r2:.5f}")
    assert err.max() < 0.01 and model.r2 > 0.99


@pytest.mark.parametrize("edit,says", [
    (lambda r: dict(r, extra={}), "needs the teacher's held-out loss"),
    (lambda r: dict(r, tokens=200_000), "2 or more distillation token budgets"),
    (lambda r: dict(r, tokens=None), "needs the distillation tokens"),
])
def test_what_is_missing_is_named(edit, says):
    with pytest.raises(CapgapError, match=says):
        fit_distillation(points_from_rows([edit(r) for r in rows()], "store"))


def test_too_few_points():
    few = [r for r in rows() if r["teacher_params"] in (70e6, 1e9) and r["tokens"] != 4e9][:12]
    with pytest.raises(CapgapError, match="too few points for the distillation-scaling model"):
        fit_distillation(points_from_rows(few, "store"))


def _csv(path, data):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher_params", "student_params", "metric", "teacher_loss", "tokens"])
        for r in data:
            w.writerow([r["teacher_params"], r["student_params"], r["metric"],
                        r["extra"].get("val/teacher_loss", ""), r["tokens"] or ""])
    return str(path)


def test_cli_fit_and_predict(tmp_path, capsys):
    path = _csv(tmp_path / "d.csv", rows())
    assert main(["fit", "--csv", path, "--model", "distillation-scaling", "--out", str(tmp_path),
                 "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "R²" in out and "gamma'" in out and "capacity-gap law (joint) at 16B tokens, 30 runs" in out
    assert (tmp_path / "distillation.json").exists()
    assert main(["predict", "--csv", path, "--student", "100M", "--tokens", "4B"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  teacher ")]
    assert len(lines) == len(TEACHERS) - 1  # 70M is not bigger than the 100M student
    for t, lt in TEACHERS.items():
        if t > 100e6:
            line = next(x for x in lines if f"(held-out loss {lt:.4g})" in x)
            predicted = float(line.split("student loss ")[1].split()[0])
            assert abs(predicted / float(predict_loss(TRUE, lt, 100e6, 4e9)) - 1) < 0.01
    assert sum("<- best" in x for x in lines) == 1


@pytest.mark.parametrize("argv,says", [
    (["fit", "--model", "chinchilla"], "--model chinchilla is not a law model"),
    (["predict", "--student", "1B", "--model", "distillation-scaling"], "give --tokens"),
])
def test_bad_model_arguments_give_one_line(tmp_path, capsys, argv, says):
    path = _csv(tmp_path / "d.csv", rows())
    assert main([*argv, "--csv", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capgap: error: ") and err.count("\n") == 1 and says in err


def test_single_token_budget_from_the_cli(tmp_path, capsys):
    path = _csv(tmp_path / "d.csv", [dict(r, tokens=200_000) for r in rows()])
    assert main(["fit", "--csv", path, "--model", "distillation-scaling", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token budgets" in err and not (tmp_path / "o").exists()


def test_points_carry_teacher_loss_from_store_rows():
    p = points_from_rows(rows()[:3], "store")
    assert isinstance(p, Points) and p.teacher_loss[0] == 3.6 and p.tokens[0] == 1e9

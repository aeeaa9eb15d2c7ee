"""`capgap fit --holdout largest`: small students predict the largest one's teacher."""

import json

import pytest
from law_data import law_rows
from test_law_calibration import write_csv

from capgap.commands.cli import main


def test_holdout_predicts_the_largest_students_teacher(tmp_path, capsys):
    a, b = 2.5, -10e6
    write_csv(tmp_path / "r.csv", law_rows(a=a, b=b, seeds=2))
    assert main(["fit", "--csv", str(tmp_path / "r.csv"), "--holdout", "largest",
                 "--out", str(tmp_path / "o"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "the largest (400M) held out" in out and "fitted on students 20M, 50M, 100M, 200M" in out
    check = json.loads((tmp_path / "o" / "holdout.json").read_text())
    assert check["held_out_student"] == 400e6
    # extrapolated from the four smaller students, within 5% of the planted optimum
    assert check["predicted_optimum"] == pytest.approx(a * 400e6 + b, rel=0.05)
    lo, hi = check["predicted_ci95"]
    assert lo < check["predicted_optimum"] < hi
    # the teachers are 1.44× apart: the law picks the one that measured best, and the
    # interval meets the span between the best's neighbours, where the true optimum lies
    assert check["law_pick"] == check["measured_best_teacher"] and check["law_pick_regret"] == 0
    assert check["bracket_overlaps_ci"]
    assert "measured best inside the predicted interval:" in out


def test_holdout_refuses_what_it_cannot_check(tmp_path, capsys):
    write_csv(tmp_path / "two.csv", law_rows(students=(50e6, 100e6), seeds=1))
    assert main(["fit", "--csv", str(tmp_path / "two.csv"), "--holdout", "largest",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["capgap: error: --holdout largest needs 3 or more student sizes (2 to fit the "
                   "law on, 1 to hold out); the results have 2"]
    assert main(["fit", "--csv", str(tmp_path / "two.csv"), "--holdout", "smallest"]) == 2
    assert capsys.readouterr().err.strip() == "capgap: error: --holdout smallest: choose one of largest"
    assert not (tmp_path / "o").exists()

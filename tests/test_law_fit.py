"""The fit recovers a known law; bad inputs give one clear error."""

import numpy as np
import pytest
from law_data import law_rows

from capgap.law.fit import PAPER, fit, optimum, points_from_rows, read_csv
from capgap.runtime.errors import CapgapError


@pytest.mark.parametrize("a,b", [(2.5, -10e6), (4.0, 5e6)])
def test_fit_recovers_the_slope(a, b):
    result = fit(points_from_rows(law_rows(a, b), "test"), n_boot=300)
    assert result.a == pytest.approx(a, rel=0.05)
    lo, hi = result.interval(result.samples[:, 0])
    assert lo < a < hi
    assert result.r2 > 0.99 and len(result.sizes) == 5


def test_higher_is_better_flips_the_optimum():
    rows = [dict(r, metric=-r["metric"]) for r in law_rows()]
    result = fit(points_from_rows(rows, "test"), higher_is_better=True, n_boot=100)
    assert result.a == pytest.approx(2.5, rel=0.05)
    assert result.sizes[0].best_value == max(result.sizes[0].values)


def test_parabola_refines_and_edges_are_flagged():
    t = np.array([1e8, 2e8, 4e8, 8e8])
    values = (np.log(t) - np.log(3e8)) ** 2
    best, refined, _, edge = optimum(t, values)
    assert best == 4e8 and refined == pytest.approx(3e8) and not edge
    best, refined, _, edge = optimum(t, -np.log(t))  # bigger is always better here
    assert best == refined == 8e8 and edge


def test_table_and_json(tmp_path):
    result = fit(points_from_rows(law_rows(), "test"), n_boot=100)
    table = result.table()
    assert "T* = 2.4" in table or "T* = 2.5" in table
    assert f"{PAPER['a']:.3f}" in table
    data = result.to_json(tmp_path / "fit.json").read_text()
    assert '"a_ci95"' in data and "NaN" not in data


@pytest.mark.parametrize("rows,match", [
    ([], "no finished runs"),
    ([r for r in law_rows() if r["teacher_params"] == law_rows()[0]["teacher_params"]],
     "only one teacher"),
    ([r for r in law_rows() if r["student_params"] == 20_000_000], "only one student size"),
])
def test_fit_refuses_what_it_cannot_fit(rows, match):
    with pytest.raises(CapgapError, match=match):
        fit(points_from_rows(rows, "test"))


def test_csv_input(tmp_path):
    path = tmp_path / "r.csv"
    lines = ["teacher_params,student_params,metric,seed"]
    lines += [f"{r['teacher_params']},{r['student_params']},{r['metric']},{r['seed']}"
              for r in law_rows()]
    path.write_text("\n".join(lines) + "\n")
    assert fit(read_csv(path), n_boot=50).a == pytest.approx(2.5, rel=0.05)
    path.write_text("teacher_params,loss\n1,2\n")
    with pytest.raises(CapgapError, match="lacks columns student_params, metric"):
        read_csv(path)

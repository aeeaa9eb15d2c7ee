"""Sizes parse as people write them; predict picks a sensible zoo teacher."""

import pytest
from law_data import law_rows

from capgap.law.fit import fit, points_from_rows
from capgap.law.predict import load_zoo, parse_size, predict
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size


@pytest.mark.parametrize("text,n", [("3B", 3_000_000_000), ("30M", 30_000_000),
                                    ("1.2B", 1_200_000_000), ("135000000", 135_000_000),
                                    ("135_000_000", 135_000_000), ("500k", 500_000),
                                    (70_426_624, 70_426_624), ("1.5e9", 1_500_000_000)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["3Q", "", "-5M", "M", "0", True])
def test_parse_size_rejects(bad):
    with pytest.raises(CapgapError):
        parse_size(bad)


def test_format_size():
    assert format_size(162_322_944) == "162M" and format_size(1_414_647_808) == "1.41B"
    # rounding carries into the next unit: a 1M student pruned to 999,742 parameters
    assert format_size(999_742) == "1M" and format_size(999.7) == "1K" and format_size(1_000_240) == "1M"
    assert format_size(999_499) == "999K" and format_size(250_068) == "250K"


ZOO = [{"name": "p70m", "params": 70_000_000, "family": "p"},
       {"name": "p160m", "params": 160_000_000, "family": "p"},
       {"name": "p410m", "params": 410_000_000, "family": "p"}]


def test_predict_without_results_uses_the_paper():
    p = predict("30M", zoo=ZOO)
    assert p["optimal_teacher"] == pytest.approx(2.498 * 30e6 - 11.498e6)
    assert "paper" in p["source"] and p["teacher"]["name"] == "p70m"


def test_predict_without_results_for_a_small_student_uses_the_papers_ratio():
    # the paper's line gives -9M for 1M; its ratio k ≈ 2.5 is what it means there
    p = predict("1M", zoo=ZOO)
    assert p["optimal_teacher"] / p["student_params"] == pytest.approx(2.5)
    assert "2.5·S at this size" in p["source"] and p["teacher"]["name"] == "p70m"
    assert "no teacher bigger" not in " ".join(p["notes"])


def test_predict_from_a_fit_has_an_interval():
    result = fit(points_from_rows(law_rows(), "test"), n_boot=200)
    p = predict("60M", result, ZOO)
    lo, hi = p["ci95"]
    assert lo < p["optimal_teacher"] < hi and p["optimal_teacher"] == pytest.approx(140e6, rel=0.1)
    assert p["teacher"]["name"] == "p160m"
    assert predict("500M", result, ZOO)["teacher"] is None  # no zoo model is bigger


def test_zoo_reads_teacher_configs(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nfamily: x\nparams: 70426624\n")
    (tmp_path / "b.yaml").write_text("name: b\nparams: 1.4B\n")
    (tmp_path / "c.yaml").write_text("name: c\n")  # no size: not pickable
    assert [(t["name"], t["params"]) for t in load_zoo(tmp_path)] == [("a", 70426624),
                                                                    ("b", 1_400_000_000)]
    assert [t["name"] for t in load_zoo(tmp_path, family="x")] == ["a"]

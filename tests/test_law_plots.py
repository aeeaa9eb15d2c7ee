"""The PNGs are real plots of the stored data."""

import numpy as np
from law_data import law_rows
from matplotlib.image import imread

from capgap.law.fit import fit, points_from_rows
from capgap.law.plots import figures, save_plots
from capgap.law.store import Store


def test_plots_show_the_stored_points(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"))
    for row in law_rows(seeds=1):
        store.record(row)
    rows = store.results()
    result = fit(points_from_rows(rows, "test"), n_boot=100)

    paths = save_plots(result, tmp_path / "plots")
    assert [p.name for p in paths] == ["capacity_gap.png", "law.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
        pixels = imread(path)
        assert pixels.shape[0] > 300 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50

    figs = figures(result)
    curves = [l for l in figs["capacity_gap"].axes[0].lines if l.get_gid() not in ("optimum", "model")]
    assert len(curves) == len({r["student_params"] for r in rows})
    for line, size in zip(curves, result.sizes):
        stored = sorted((r["teacher_params"], r["metric"]) for r in rows
                        if r["student_params"] == size.student)
        np.testing.assert_allclose(line.get_xdata() * 1e6, [t for t, _ in stored])
        np.testing.assert_allclose(line.get_ydata(), [m for _, m in stored])
    optima = [l for l in figs["capacity_gap"].axes[0].lines if l.get_gid() == "optimum"]
    np.testing.assert_allclose([l.get_xdata()[0] * 1e6 for l in optima],
                               [s.optimum for s in result.sizes])
    assert figs["capacity_gap"].axes[0].get_xscale() == "log"
    # the joint fit's surface is drawn through each student's points
    model = [l for l in figs["capacity_gap"].axes[0].lines if l.get_gid() == "model"]
    assert len(model) == len(result.sizes)
    for line, size in zip(model, result.sizes):
        assert abs(line.get_xdata()[np.argmin(line.get_ydata())] * 1e6 / size.optimum - 1) < 0.05


def test_seed_spread_is_drawn_as_error_bars(tmp_path):
    result = fit(points_from_rows(law_rows(seeds=3), "test"), n_boot=50)
    ax = figures(result)["capacity_gap"].axes[0]
    bars = [c for c in ax.collections if c.get_gid() == "spread"]  # one LineCollection each
    assert len(bars) == len(result.sizes) and "seed s.d." in ax.get_ylabel()


def test_each_students_fitted_curve_follows_skewed_points():
    """On skewed curves the dotted model is the fitted skew+cubic curve of each student,
    drawn over its points: it passes close to them and is lopsided as they are."""
    from test_law_calibration import MISSPECIFIED

    from capgap.law.fit import read_csv

    result = fit(read_csv(MISSPECIFIED), n_boot=20)
    assert result.shape == "skew+cubic"
    ax = figures(result)["capacity_gap"].axes[0]
    assert "fitted skew+cubic curve" in ax.get_title()
    model = [l for l in ax.lines if l.get_gid() == "model"]
    assert len(model) == len(result.sizes)
    for line, size in zip(model, result.sizes):
        at_points = np.interp(np.log(size.teachers), np.log(line.get_xdata() * 1e6), line.get_ydata())
        # within a tenth of the points' own rise and fall (the misfit the warning reports)
        assert np.sqrt(np.mean((at_points - size.values) ** 2)) < 0.1 * np.ptp(size.values)
        # one e-fold either side of the optimum the curve rises by different amounts
        sides = result.curve(size, size.optimum * np.exp([-1.0, 1.0])) - size.optimum_value
        assert abs(np.log(sides[1] / sides[0])) > 0.3

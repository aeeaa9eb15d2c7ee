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
    curves = [l for l in figs["capacity_gap"].axes[0].lines if l.get_gid() != "optimum"]
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

"""The two pictures of the study: capacity-gap curves and the fitted law.

Figures are built with matplotlib.figure.Figure, not pyplot: no global backend state, so
they save from a headless sweep and still display inline in a notebook.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from capgap.law.fit import PAPER, PAPER_RATIO, Fit, paper_optimum
from capgap.runtime.atomic import atomic_file
from capgap.runtime.sizes import format_size

M = 1e6  # axes in millions of parameters, as the paper


def figures(fit: Fit) -> dict[str, Figure]:
    """{"capacity_gap": …, "law": …}, for saving or for logging to TensorBoard."""
    return {"capacity_gap": curves_figure(fit), "law": law_figure(fit)}


def curves_figure(fit: Fit) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for s in fit.sizes:
        (line,) = ax.plot(s.teachers / M, s.values, "o-", label=f"student {format_size(s.student)}")
        if s.spread is not None and not np.all(np.isnan(s.spread)):  # seed spread, where seeds
            ax.errorbar(s.teachers / M, s.values, yerr=np.nan_to_num(s.spread), fmt="none",
                        ecolor=line.get_color(), capsize=3, gid="spread")
        if fit.method == "joint" and s.optimum > 0:
            grid = np.geomspace(min(s.teachers.min(), s.optimum), max(s.teachers.max(), s.optimum), 60)
            ax.plot(grid / M, fit.curve(s, grid), ":", color=line.get_color(), gid="model")
        ax.plot([s.optimum / M], [s.optimum_value], "*", ms=14, color=line.get_color(),
                markeredgecolor="k", gid="optimum")
    ax.set_xscale("log")
    # plain numbers (0.3, 1, 2) rather than matplotlib's 3×10⁻¹ on a log axis of millions
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("teacher parameters (M)")
    ax.set_ylabel(f"student {fit.metric}" + (" (mean ± seed s.d.)" if any(
        s.spread is not None and not np.all(np.isnan(s.spread)) for s in fit.sizes) else ""))
    ax.set_title(f"capacity gap (★ {fit.method} optimum"
                 + (f"; dotted: each student's fitted {fit.shape} curve)" if fit.method == "joint" else ")"),
                 fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def law_figure(fit: Fit) -> Figure:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    S = np.array([s.student for s in fit.sizes])
    T = np.array([s.optimum for s in fit.sizes])
    ci = np.array([s.ci for s in fit.sizes]).T
    ax.errorbar(S / M, T / M, yerr=np.nan_to_num(np.abs(ci - T)) / M, fmt="o", color="k", capsize=3,
                label=f"optimal teacher, {fit.method} fit (95% CI)")
    if fit.two_step is not None:
        ax.plot(S / M, [s.optimum / M for s in fit.two_step.sizes], "s", mfc="none", color="gray",
                label=f"two-step optima (line: T* = {fit.two_step.a:.2f}·S "
                      f"{'-' if fit.two_step.b < 0 else '+'} {abs(fit.two_step.b) / M:.1f}M)")
    grid = np.linspace(0, S.max() * 1.15, 100)
    band = fit.samples[:, :1] * grid + fit.samples[:, 1:]
    ax.fill_between(grid / M, *np.quantile(band, [0.025, 0.975], axis=0) / M, alpha=0.25,
                    label="fit 95% band")
    ax.plot(grid / M, (fit.a * grid + fit.b) / M, "-",
            label=f"fit T* = {fit.a:.2f}·S {'-' if fit.b < 0 else '+'} {abs(fit.b) / M:.1f}M")
    ax.plot(grid / M, np.array([paper_optimum(s) for s in grid]) / M, "--", color="gray",
            label=f"paper T* = {PAPER['a']}·S − {-PAPER['b'] / M}M ({PAPER_RATIO}·S below ~12M)")
    ax.set_xlabel("student parameters S (M)")
    ax.set_ylabel("optimal teacher parameters T* (M)")
    ax.set_title("law of capacity gap")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_plots(fit: Fit, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(fit).items():
        paths.append(out_dir / f"{name}.png")
        with atomic_file(paths[-1]) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    return paths

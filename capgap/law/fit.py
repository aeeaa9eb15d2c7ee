"""Fit the Law of Capacity Gap: the optimal teacher T* = a·S + b from measured study points.

Two estimators, reported side by side:

- joint (what capgap reports): the surface m(T, S) = L(S) + c(S)·q(log T − log T*(S)) fitted
  to every point at once, its curve shape q (parabola or skew+cubic) chosen by AICc, weighted
  by a noise model, with a bootstrap over students (capgap.law.joint; chosen by calibration,
  docs/calibration.md);
- two-step (the earlier estimate, kept for comparison): per student size the best measured
  teacher refined by the vertex of a parabola in log T through it and its two neighbours,
  then an unweighted line through those optima. It uses three points per student, lets the
  largest students dominate the line and passes edge optima through as if measured; the
  calibration test (tests/test_law_calibration.py) shows what that costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capgap.law.joint import ROBUST, Cells, Estimator, fit_joint, q
from capgap.law.points import CSV_COLUMNS, Points, group_students, points_from_rows, read_csv
from capgap.runtime.atomic import write_atomic
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size

__all__ = ["PAPER", "CSV_COLUMNS", "Points", "points_from_rows", "read_csv", "SizeFit", "Fit",
           "fit", "fit_two_step", "optimum"]

# Zhang et al. 2025, fit over GPT-2 and Pythia, in millions of parameters
PAPER = {"a": 2.498, "b": -11.498e6, "r2": 0.9957}
PAPER_RATIO = 2.5  # T* ≈ 2.5·S: the paper's line where its intercept would make T* ≤ S


def paper_optimum(student: float) -> float:
    """The paper's T* for a student, as a ratio where the line's intercept dominates (tiny S)."""
    t = PAPER["a"] * student + PAPER["b"]
    return t if t > 1.5 * student else PAPER_RATIO * student


@dataclass
class SizeFit:
    student: float  # median parameter count of the students grouped as one size
    teachers: np.ndarray  # sorted teacher sizes
    values: np.ndarray  # mean metric per teacher (over seeds)
    best: float  # best measured teacher
    best_value: float
    optimum: float  # the estimator's T* for this student
    optimum_value: float  # the metric the estimator expects at its optimum
    at_edge: bool  # the best measured teacher is the smallest or largest measured
    ci: tuple[float, float] = (np.nan, np.nan)  # 95% bootstrap interval of the optimum
    spread: np.ndarray | None = None  # seed standard deviation per teacher (NaN with one seed)
    curvature: float = np.nan  # c(S) of the joint surface


@dataclass
class Fit:
    sizes: list[SizeFit]
    metric: str
    higher_is_better: bool
    a: float
    b: float
    r2: float  # joint: of the surface on the cell means; two-step: of the line through optima
    samples: np.ndarray  # bootstrap (a, b) pairs, for intervals and bands; not saved
    notes: list[str] = field(default_factory=list)
    method: str = "joint"
    chi2: float = np.nan  # joint: reduced χ² against the seed spread
    two_step: "Fit | None" = None  # the two-step estimate of the same points, for comparison
    shape: str = "parabola"  # joint: the curve model used (capgap.law.joint.SHAPES)
    shape_params: tuple = ()  # joint: its shared parameters (η, δ for skew+cubic)
    misfit: str | None = None  # joint: one line when the curves fit worse than the seeds allow
    shapes_tried: tuple = ()  # joint: the curve models the points allowed (AICc picked `shape`)

    def predict(self, student: float, level: float = 0.95) -> tuple[float, float, float]:
        """T* for a student size, with a bootstrap interval on the fitted line."""
        draws = self.samples[:, 0] * student + self.samples[:, 1]
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
        return self.a * student + self.b, float(lo), float(hi)

    def interval(self, values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def curve(self, size: SizeFit, teachers: np.ndarray) -> np.ndarray:
        """The joint surface along one student's teachers (in the metric's own sign)."""
        sign = -1.0 if self.higher_is_better else 1.0
        x = q(np.log(teachers) - np.log(max(size.optimum, 1.0)), self.shape_params)
        return sign * (sign * size.optimum_value + size.curvature * x)

    def rms(self) -> float:
        """RMS residual of the joint surface on the per-teacher means, in the metric's units."""
        res = np.concatenate([self.curve(s, s.teachers) - s.values for s in self.sizes])
        return float(np.sqrt(np.mean(res ** 2)))

    def law(self) -> dict:
        a_ci, b_ci = self.interval(self.samples[:, 0]), self.interval(self.samples[:, 1])
        return {"estimator": self.method, "a": self.a, "b": self.b, "r2": self.r2,
                **({"curve_model": self.shape, "shape_params": list(self.shape_params)}
                   if self.method == "joint" else {}),
                "r2_of": "surface" if self.method == "joint" else "line through optima",
                "chi2_red": None if np.isnan(self.chi2) else self.chi2,
                "rms": self.rms() if self.method == "joint" else None,
                "a_ci95": list(a_ci), "b_ci95": list(b_ci),
                "k_mean": float(np.mean([s.optimum / s.student for s in self.sizes])),
                "n_bootstrap": len(self.samples), "units": "parameters"}

    def to_dict(self) -> dict:
        out = {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "sizes": [{"student_params": s.student, "teacher_params": s.teachers.tolist(),
                       "metric": s.values.tolist(),
                       "spread": None if s.spread is None else
                       [None if np.isnan(v) else float(v) for v in s.spread],
                       "best_measured": s.best, "optimum": s.optimum,
                       "optimum_ci95": None if np.isnan(s.ci[0]) else list(s.ci),
                       "k": s.optimum / s.student, "at_edge": s.at_edge} for s in self.sizes],
            "law": self.law(),
            "paper": PAPER,
            "notes": self.notes,
        }
        if self.two_step is not None:
            out["two_step"] = {"law": self.two_step.law(),
                               "optima": [s.optimum for s in self.two_step.sizes]}
        return out

    def to_json(self, path: str | Path) -> Path:
        return write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def line(self) -> str:
        d = self.law()
        gof = (f"surface R² {self.r2:.4f}, RMS {self.rms():.3g}"
               + ("" if np.isnan(self.chi2) else f", χ²/dof {self.chi2:.2f}")
               if self.method == "joint" else f"line R² {self.r2:.4f}")
        return (f"T* = {self.a:.3f}·S {'-' if self.b < 0 else '+'} {abs(self.b) / 1e6:.3f}M"
                f"   a 95% CI [{d['a_ci95'][0]:.3f}, {d['a_ci95'][1]:.3f}]"
                f"   b 95% CI [{d['b_ci95'][0] / 1e6:.2f}M, {d['b_ci95'][1] / 1e6:.2f}M]"
                f"   {gof}   mean k {d['k_mean']:.2f}")

    def table(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        two = self.two_step
        lines = [f"capacity gap: {self.metric} ({better} is better) per student size",
                 f"{'student':>9} {'teachers':>8} {'best T':>8} {self.metric[:10]:>10} "
                 f"{'T* ' + self.method:>10} {'95% CI':>17} {'k=T*/S':>7}"
                 + (f" {'T* two-step':>11}" if two else "") + "  note"]
        for i, s in enumerate(self.sizes):
            ci = "-" if np.isnan(s.ci[0]) else f"[{format_size(s.ci[0])}, {format_size(s.ci[1])}]"
            note = "best measured teacher at the edge of those measured" if s.at_edge else ""
            lines.append(f"{format_size(s.student):>9} {len(s.teachers):>8} {format_size(s.best):>8}"
                         f" {s.best_value:>10.4g} {format_size(s.optimum):>10} {ci:>17}"
                         f" {s.optimum / s.student:>7.2f}"
                         + (f" {format_size(two.sizes[i].optimum):>11}" if two else "") + f"  {note}")
        lines += ["", f"{self.method}: {self.line()}   ({len(self.sizes)} student sizes)"]
        if self.method == "joint":
            lines.append(f"curve model: {describe_shape(self.shape, self.shape_params, self.shapes_tried)}")
        if self.misfit:
            lines.append(f"warning: {self.misfit}")
        if two:
            lines.append(f"two-step: {two.line()}")
        lines.append(f"paper: T* = {PAPER['a']:.3f}·S - {-PAPER['b'] / 1e6:.3f}M"
                     f"   R² {PAPER['r2']}   (GPT-2 and Pythia)")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def optimum(teachers: np.ndarray, values: np.ndarray) -> tuple[float, float, float, bool]:
    """(best measured T, refined T, metric at refined T, at_edge); values lower-is-better."""
    i = int(np.argmin(values))
    if i == 0 or i == len(teachers) - 1:
        return teachers[i], teachers[i], values[i], True
    x = np.log(teachers[i - 1:i + 2])
    coef = np.polyfit(x, values[i - 1:i + 2], 2)
    if coef[0] <= 0:  # ties make it flat: no vertex to trust
        return teachers[i], teachers[i], values[i], False
    vertex = float(np.clip(-coef[1] / (2 * coef[0]), x[0], x[2]))
    return teachers[i], float(np.exp(vertex)), float(np.polyval(coef, vertex)), False


def _line(s: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    a, b = np.polyfit(s, t, 1)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1 - float(np.sum((t - (a * s + b)) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def _measured(points: Points, higher_is_better: bool, tol: float):
    """Per student size: its SizeFit skeleton and its cell values (lower-is-better)."""
    sign = -1.0 if higher_is_better else 1.0
    groups = group_students(points.student, tol)
    if len(np.unique(points.teacher)) < 2:
        raise CapgapError(f"only one teacher size ({format_size(points.teacher[0])}) in the "
                          "results: an optimal teacher needs at least 2 teacher sizes per student")
    cells, sizes, notes = [], [], []
    for g in np.unique(groups):
        in_g = groups == g
        teachers = np.unique(points.teacher[in_g])
        student = float(np.median(points.student[in_g]))
        if len(teachers) < 2:
            notes.append(f"student {format_size(student)} skipped: measured with one teacher only")
            continue
        # one array of seed values per teacher: the unit the bootstrap resamples
        cell = [sign * points.value[in_g & (points.teacher == t)] for t in teachers]
        means = np.array([c.mean() for c in cell])
        spread = np.array([c.std(ddof=1) if len(c) > 1 else np.nan for c in cell])
        best, opt, opt_value, edge = optimum(teachers, means)
        cells.append(cell)
        sizes.append(SizeFit(student, teachers, sign * means, best, sign * means.min(), opt,
                             sign * opt_value, edge, spread=spread))
    if not sizes:
        raise CapgapError("no student size was measured with 2 or more teachers: "
                          "no optimal teacher can be found")
    if len(sizes) < 2:
        s = sizes[0]
        raise CapgapError(f"only one student size ({format_size(s.student)}, best measured teacher "
                          f"{format_size(s.best)}): fitting T* = a·S + b needs 2 or more")
    return sizes, cells, notes


def fit_two_step(points: Points, higher_is_better: bool = False, n_boot: int = 1000,
                 seed: int = 0, tol: float = 0.1) -> Fit:
    """Parabola vertex per student, then a line through the vertices (the earlier estimator).

    Bootstrap: resample the seeds inside each (student, teacher) cell and the student sizes
    on the line, so the intervals carry both the run-to-run noise and the optima's scatter."""
    sizes, cells, notes = _measured(points, higher_is_better, tol)
    if any(s.at_edge for s in sizes):
        notes.append("two-step: an optimum at the edge of the measured teachers enters the line "
                     "as if it were measured")
    S = np.array([s.student for s in sizes])
    T = np.array([s.optimum for s in sizes])
    a, b, r2 = _line(S, T)

    rng = np.random.default_rng(seed)
    boot_t = np.empty((n_boot, len(sizes)))
    for j, (size, cell) in enumerate(zip(sizes, cells)):
        means = np.stack([c[rng.integers(0, len(c), (n_boot, len(c)))].mean(1) for c in cell], 1)
        boot_t[:, j] = [optimum(size.teachers, m)[1] for m in means]
        if any(len(c) > 1 for c in cell):  # one seed per teacher: no run-to-run spread to show
            size.ci = (float(np.quantile(boot_t[:, j], 0.025)),
                       float(np.quantile(boot_t[:, j], 0.975)))
    samples = []
    for i in range(n_boot):
        pick = rng.integers(0, len(sizes), len(sizes))
        if len(np.unique(pick)) >= 2:  # a resample of one size has no line
            samples.append(_line(S[pick], boot_t[i, pick])[:2])
    samples = np.array(samples) if samples else np.array([[a, b]])
    return Fit(sizes, points.metric, higher_is_better, a, b, r2, samples, notes, method="two-step")


def describe_shape(shape: str, params: tuple, tried: tuple = ()) -> str:
    others = [t for t in tried if t != shape]
    how = (f"chosen by AICc over {', '.join(others)}" if others else
           "the only curve model these points allow" if len(tried) == 1 else "as asked")
    if shape == "parabola":
        return f"parabola in log T ({how})"
    eta, delta = params
    side = "large-teacher" if eta > 0 else "small-teacher"
    return (f"skew+cubic in log T, shared by the students: the {side} side {np.exp(abs(eta)):.2f}× "
            f"as steep, cubic δ {delta:+.3f} ({how})")


def _misfit_line(sizes, j, n_boot: int) -> str | None:
    """One line when the surface misses by more than the seed spread: the students that fit
    worst, and how much wider the slope's interval is than seed noise alone makes it."""
    if np.isnan(j.chi2) or j.chi2 <= 2:
        return None
    order = np.argsort(-j.chi2_student)[:2]
    worst = ", ".join(f"{format_size(sizes[i].student)} (χ²/dof {j.chi2_student[i]:.1f})" for i in order)
    line = (f"misfit is large (χ²/dof {j.chi2:.1f} against the seed spread); the curves of student "
            f"{worst} fit worst")
    if j.noise_samples is not None and len(j.noise_samples) > 1 and len(j.samples) > 1:
        wide = np.subtract(*np.quantile(j.samples[:, 0], [0.975, 0.025]))
        narrow = np.subtract(*np.quantile(j.noise_samples[:, 0], [0.975, 0.025]))
        if narrow > 0:
            line += (f"; the bootstrap resamples the fit's residuals, misfit included (and whole "
                     f"students, with 4 or more sizes), so the 95% interval of a is {wide / narrow:.1f}× "
                     f"as wide as seed noise alone would make it")
    return line


def fit(points: Points, higher_is_better: bool = False, n_boot: int = 1000, seed: int = 0,
        tol: float = 0.1, estimator: Estimator = ROBUST) -> Fit:
    """The joint fit, with the two-step estimate of the same points beside it (fit.two_step)."""
    two = fit_two_step(points, higher_is_better, n_boot, seed, tol)
    sizes, cells, notes = _measured(points, higher_is_better, tol)
    S = np.array([s.student for s in sizes])
    flat = Cells(np.concatenate([[j] * len(c) for j, c in enumerate(cells)]).astype(int), S,
                 np.concatenate([s.teachers for s in sizes]), [v for c in cells for v in c])
    # starts: the two-step line, the paper's ratio, and a spread of slopes through the origin
    starts = [(two.a, two.b)] + [(k, 0.0) for k in (1.5, PAPER_RATIO, 4.0)]
    j = fit_joint(flat, starts, n_boot, seed, estimator)
    sign = -1.0 if higher_is_better else 1.0
    for i, s in enumerate(sizes):
        s.optimum = float(j.a * s.student + j.b)
        s.optimum_value = float(sign * j.floor[i])
        s.curvature = float(j.curvature[i])
        s.ci = (float(np.quantile(j.optima[:, i], 0.025)), float(np.quantile(j.optima[:, i], 0.975)))
    if any(s.at_edge for s in sizes):
        notes.append("a best measured teacher at the edge of the grid: the joint fit places that "
                     "student's optimum by the line; a teacher beyond the edge would test it")
    if bad := [format_size(s.student) for s, c in zip(sizes, j.curvature) if c <= 0]:
        notes.append(f"no minimum in the fitted curve of student {', '.join(bad)}: its points "
                     "do not rise on both sides of any teacher")
    if len(j.samples) <= 1 and n_boot > 1:
        notes.append("as many parameters as (student, teacher) pairs and one seed: the fit is "
                     "exact and has no intervals; measure more teachers or seeds")
    if any(s.optimum <= 0 for s in sizes):
        notes.append("the fitted line gives no positive teacher for some student")
    return Fit(sizes, points.metric, higher_is_better, float(j.a), float(j.b), j.r2, j.samples,
               notes + two.notes, method="joint", chi2=j.chi2, two_step=two, shape=j.shape,
               shape_params=j.shape_params, misfit=_misfit_line(sizes, j, n_boot),
               shapes_tried=j.shapes_tried)

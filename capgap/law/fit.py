"""Fit the Law of Capacity Gap: the optimal teacher per student size, then T* = a·S + b.

Points are (teacher_params, student_params, metric, seed). Per student size the best
measured teacher is refined by the vertex of a parabola in log T through it and its two
neighbours; the line is fit to the refined optima. Bootstrap: resample the seeds inside
each (student, teacher) cell and the student sizes on the line, so the intervals carry both
the run-to-run noise and the scatter of the optima about the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capgap.errors import CapgapError
from capgap.law.sizes import format_size

# Zhang et al. 2025, fit over GPT-2 and Pythia, in millions of parameters
PAPER = {"a": 2.498, "b": -11.498e6, "r2": 0.9957}
CSV_COLUMNS = ("teacher_params", "student_params", "metric")


@dataclass
class Points:
    teacher: np.ndarray  # parameters
    student: np.ndarray
    value: np.ndarray
    seed: np.ndarray
    metric: str = "metric"


def points_from_rows(rows: list[dict], source: str, metric: str | None = None) -> Points:
    """Done rows of the store -> Points; one metric only, since mixing them means nothing."""
    if metric:
        rows = [r for r in rows if r.get("metric_name") == metric]
    if not rows:
        raise CapgapError(f"no finished runs{f' with metric {metric}' if metric else ''} "
                          f"in {source}: nothing to fit")
    names = sorted({r.get("metric_name") or "metric" for r in rows})
    if len(names) > 1:
        raise CapgapError(f"{source} mixes metrics {', '.join(names)}: pick one with --metric")
    return Points(np.array([float(r["teacher_params"]) for r in rows]),
                  np.array([float(r["student_params"]) for r in rows]),
                  np.array([float(r["metric"]) for r in rows]),
                  np.array([int(r["seed"]) if r.get("seed") not in (None, "") else 0 for r in rows]),
                  names[0])


def read_csv(path: str | Path) -> Points:
    """A CSV of results: teacher_params, student_params, metric, optional seed."""
    path = Path(path)
    if not path.is_file():
        raise CapgapError(f"no CSV file at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if missing := [c for c in CSV_COLUMNS if c not in header]:
            raise CapgapError(f"{path} lacks column{'s' * (len(missing) > 1)} "
                              f"{', '.join(missing)} (needs {', '.join(CSV_COLUMNS)}; seed optional)")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({"teacher_params": float(r["teacher_params"]),
                             "student_params": float(r["student_params"]),
                             "metric": float(r["metric"]), "seed": r.get("seed") or None,
                             "metric_name": r.get("metric_name") or None})
            except (TypeError, ValueError):
                raise CapgapError(f"{path} line {line}: teacher_params, student_params and "
                                  "metric must be numbers") from None
    return points_from_rows(rows, str(path))


@dataclass
class SizeFit:
    student: float  # median parameter count of the students grouped as one size
    teachers: np.ndarray  # sorted teacher sizes
    values: np.ndarray  # mean metric per teacher (over seeds)
    best: float  # best measured teacher
    best_value: float
    optimum: float  # refined by the parabola, or the best measured one at an edge
    optimum_value: float
    at_edge: bool
    ci: tuple[float, float] = (np.nan, np.nan)  # over seeds; NaN with one seed per teacher


@dataclass
class Fit:
    sizes: list[SizeFit]
    metric: str
    higher_is_better: bool
    a: float
    b: float
    r2: float
    samples: np.ndarray  # bootstrap (a, b) pairs, for intervals and bands; not saved
    notes: list[str] = field(default_factory=list)

    def predict(self, student: float, level: float = 0.95) -> tuple[float, float, float]:
        """T* for a student size, with a bootstrap interval on the fitted line."""
        draws = self.samples[:, 0] * student + self.samples[:, 1]
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
        return self.a * student + self.b, float(lo), float(hi)

    def interval(self, values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        a_ci, b_ci = self.interval(self.samples[:, 0]), self.interval(self.samples[:, 1])
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "sizes": [{"student_params": s.student, "teacher_params": s.teachers.tolist(),
                       "metric": s.values.tolist(), "best_measured": s.best,
                       "optimum": s.optimum,
                       "optimum_ci95": None if np.isnan(s.ci[0]) else list(s.ci),
                       "k": s.optimum / s.student, "at_edge": s.at_edge} for s in self.sizes],
            "law": {"a": self.a, "b": self.b, "r2": self.r2, "a_ci95": list(a_ci),
                    "b_ci95": list(b_ci), "k_mean": float(np.mean([s.optimum / s.student
                                                                  for s in self.sizes])),
                    "n_bootstrap": len(self.samples), "units": "parameters"},
            "paper": PAPER,
            "notes": self.notes,
        }

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        lines = [f"capacity gap: {self.metric} ({better} is better) per student size",
                 f"{'student':>9} {'teachers':>8} {'best T':>8} {self.metric[:10]:>10} "
                 f"{'T* refined':>10} {'95% CI':>17} {'k=T*/S':>7}  note"]
        for s in self.sizes:
            ci = "1 seed" if np.isnan(s.ci[0]) else f"[{format_size(s.ci[0])}, {format_size(s.ci[1])}]"
            note = "optimum at the edge of the teachers measured" if s.at_edge else ""
            lines.append(f"{format_size(s.student):>9} {len(s.teachers):>8} {format_size(s.best):>8}"
                         f" {s.best_value:>10.4g} {format_size(s.optimum):>10} {ci:>17}"
                         f" {s.optimum / s.student:>7.2f}  {note}")
        d = self.to_dict()["law"]
        lines += ["",
                  f"fit:   T* = {self.a:.3f}·S {'+-'[self.b < 0]} {abs(self.b) / 1e6:.3f}M"
                  f"   R² {self.r2:.4f}   a 95% CI [{d['a_ci95'][0]:.3f}, {d['a_ci95'][1]:.3f}]"
                  f"   b 95% CI [{d['b_ci95'][0] / 1e6:.2f}M, {d['b_ci95'][1] / 1e6:.2f}M]"
                  f"   mean k {d['k_mean']:.2f}   ({len(self.sizes)} student sizes)",
                  f"paper: T* = {PAPER['a']:.3f}·S - {-PAPER['b'] / 1e6:.3f}M   R² {PAPER['r2']}"
                  "   (GPT-2 and Pythia)"]
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


def _group_students(student: np.ndarray, tol: float) -> np.ndarray:
    """Group label per point: students pruned to one target differ a little across teachers
    (counts are rounded per architecture), so sizes within tol of each other are one size."""
    order = np.unique(student)
    labels, start, current = {}, order[0], 0
    for s in order:
        if s > start * (1 + tol):
            start, current = s, current + 1
        labels[s] = current
    return np.array([labels[s] for s in student])


def _line(s: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    a, b = np.polyfit(s, t, 1)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1 - float(np.sum((t - (a * s + b)) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def fit(points: Points, higher_is_better: bool = False, n_boot: int = 1000, seed: int = 0,
        tol: float = 0.1) -> Fit:
    sign = -1.0 if higher_is_better else 1.0  # work lower-is-better throughout
    groups = _group_students(points.student, tol)
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
        best, opt, opt_value, edge = optimum(teachers, means)
        cells.append(cell)
        sizes.append(SizeFit(student, teachers, sign * means, best, sign * means.min(), opt,
                             sign * opt_value, edge))
    if not sizes:
        raise CapgapError("no student size was measured with 2 or more teachers: "
                          "no optimal teacher can be found")
    if len(sizes) < 2:
        s = sizes[0]
        raise CapgapError(f"only one student size ({format_size(s.student)}, optimal teacher "
                          f"{format_size(s.optimum)}): fitting T* = a·S + b needs 2 or more")
    if any(s.at_edge for s in sizes):
        notes.append("an optimum at the edge of the measured teachers may lie beyond them; "
                     "add a smaller or larger teacher for that student")
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
    return Fit(sizes, points.metric, higher_is_better, a, b, r2, samples, notes)

"""Measured study points, from the store or a CSV, grouped the way the law is fitted.

A point is (teacher_params, student_params, metric, seed), plus the teacher's held-out
loss and the distillation tokens when known (the distillation-scaling model needs them).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capgap.runtime.errors import CapgapError

CSV_COLUMNS = ("teacher_params", "student_params", "metric")
TEACHER_LOSS_KEY = "val/teacher_loss"  # what StoreCallback writes into a row's extra


@dataclass
class Points:
    teacher: np.ndarray  # parameters
    student: np.ndarray
    value: np.ndarray
    seed: np.ndarray
    metric: str = "metric"
    teacher_loss: np.ndarray | None = None  # the teacher's held-out loss; NaN where unknown
    tokens: np.ndarray | None = None  # distillation tokens; NaN where unknown
    higher_is_better: bool | None = None  # as the rows recorded it (benchmarks); None: unknown


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def points_from_rows(rows: list[dict], source: str, metric: str | None = None) -> Points:
    """Done rows of the store -> Points; one metric only, since mixing them means nothing.
    `metric` is a row's metric_name, or a figure in its extra (the benchmarks of eval=harness,
    e.g. harness/hellaswag/acc_norm), whose direction the rows carry."""
    higher = None
    if metric:
        rows, higher = _with_metric(rows, metric)
    if not rows:
        raise CapgapError(f"no finished runs{f' with metric {metric}' if metric else ''} "
                          f"in {source}: nothing to fit")
    names = sorted({r.get("metric_name") or "metric" for r in rows})
    if len(names) > 1:
        raise CapgapError(f"{source} mixes metrics {', '.join(names)}: pick one with --metric")

    def teacher_loss(r):
        if r.get("teacher_loss") not in (None, ""):
            return _number(r["teacher_loss"])
        extra = r.get("extra")
        return _number(extra.get(TEACHER_LOSS_KEY)) if isinstance(extra, dict) else np.nan

    return Points(np.array([float(r["teacher_params"]) for r in rows]),
                  np.array([float(r["student_params"]) for r in rows]),
                  np.array([float(r["metric"]) for r in rows]),
                  np.array([int(r["seed"]) if r.get("seed") not in (None, "") else 0 for r in rows]),
                  names[0],
                  np.array([teacher_loss(r) for r in rows]),
                  np.array([_number(r.get("tokens")) for r in rows]), higher)


HIGHER_KEY = "harness/higher_is_better"  # what capgap.eval.harness writes beside its figures


def _with_metric(rows: list[dict], metric: str) -> tuple[list[dict], bool | None]:
    """The rows that have `metric`, as their metric; and whether higher is better, when the
    rows say (a benchmark's figures come with lm-eval's direction)."""
    out, higher = [], set()
    for r in rows:
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        if r.get("metric_name") == metric:
            out.append(r)
        elif np.isfinite(_number(extra.get(metric))):
            out.append(dict(r, metric_name=metric, metric=float(extra[metric])))
            if isinstance(extra.get(HIGHER_KEY), dict) and metric in extra[HIGHER_KEY]:
                higher.add(bool(extra[HIGHER_KEY][metric]))
    return out, higher.pop() if len(higher) == 1 else None


def read_csv(path: str | Path) -> Points:
    """A CSV of results: teacher_params, student_params, metric; optional seed, metric_name,
    teacher_loss, tokens (an exported store has these last two in extra and tokens)."""
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
                row = {"teacher_params": float(r["teacher_params"]),
                       "student_params": float(r["student_params"]),
                       "metric": float(r["metric"]), "seed": r.get("seed") or None,
                       "metric_name": r.get("metric_name") or None,
                       "teacher_loss": r.get("teacher_loss") or None, "tokens": r.get("tokens") or None}
            except (TypeError, ValueError):
                raise CapgapError(f"{path} line {line}: teacher_params, student_params and "
                                  "metric must be numbers") from None
            if r.get("extra"):  # a store export keeps the teacher's loss inside extra
                try:
                    row["extra"] = json.loads(r["extra"])
                except ValueError:
                    raise CapgapError(f"{path} line {line}: extra is not JSON") from None
            rows.append(row)
    return points_from_rows(rows, str(path))


def group_students(student: np.ndarray, tol: float = 0.1) -> np.ndarray:
    """Group label per point: students pruned to one target differ a little across teachers
    (counts are rounded per architecture), so sizes within tol of each other are one size."""
    order = np.unique(student)
    labels, start, current = {}, order[0], 0
    for s in order:
        if s > start * (1 + tol):
            start, current = s, current + 1
        labels[s] = current
    return np.array([labels[s] for s in student])

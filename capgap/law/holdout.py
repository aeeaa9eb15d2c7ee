"""The paper's extrapolation claim as a check: fit the law on every student size but the
largest, predict the held-out student's optimal teacher, and set it beside the teacher that
measured best for that student (`capgap fit --holdout largest`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capgap.law.fit import Fit, fit
from capgap.law.points import Points, group_students
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size


@dataclass
class Holdout:
    student: float  # the held-out student size (median of its runs)
    fitted_on: list[float]  # the student sizes the law was fitted on
    predicted: float  # T* the law gives the held-out student
    ci: tuple[float, float]  # its 95% interval
    best: float  # the teacher that measured best for the held-out student
    bracket: tuple[float, float]  # the measured teachers on either side of the best (the best at an edge)
    law: Fit
    pick: float  # the measured teacher nearest the predicted T* (in log size): the law's choice
    regret: float  # how much worse its measured metric is than the best's (≥ 0, the metric's units)

    @property
    def inside(self) -> bool:
        return self.ci[0] <= self.best <= self.ci[1]

    @property
    def overlaps(self) -> bool:
        """The interval meets the span between the best teacher's measured neighbours,
        where the held-out student's true optimum lies (on a unimodal curve)."""
        return self.ci[0] <= self.bracket[1] and self.bracket[0] <= self.ci[1]

    def to_dict(self) -> dict:
        return {"held_out_student": self.student, "fitted_on": self.fitted_on,
                "predicted_optimum": self.predicted, "predicted_ci95": list(self.ci),
                "measured_best_teacher": self.best, "measured_bracket": list(self.bracket),
                "best_inside_ci": self.inside, "bracket_overlaps_ci": self.overlaps,
                "law_pick": self.pick, "law_pick_regret": self.regret,
                "law": self.law.law()}

    def table(self) -> str:
        lo, hi = self.ci
        on = ", ".join(format_size(s) for s in self.fitted_on)
        edge = self.best in self.bracket
        return "\n".join([
            f"holdout: the law fitted on students {on}, the largest ({format_size(self.student)}) held out",
            f"  fitted: {self.law.method}: {self.law.line()}",
            f"  predicted T*({format_size(self.student)}) = {format_size(self.predicted)}, "
            f"95% CI [{format_size(lo)}, {format_size(hi)}]",
            f"  measured best teacher: {format_size(self.best)}"
            + (" (at the edge of those measured)" if edge else
               f" (its measured neighbours: {format_size(self.bracket[0])} and {format_size(self.bracket[1])})"),
            f"  measured best inside the predicted interval: {'yes' if self.inside else 'no'}"
            + ("" if self.inside else
               f"; the interval {'meets' if self.overlaps else 'misses'} the span between its neighbours"),
            f"  the law's pick among the measured teachers: {format_size(self.pick)}, "
            + ("the best" if self.pick == self.best else
               f"{self.law.metric} worse than the best by {self.regret:.4g}")])


def holdout_largest(points: Points, higher_is_better: bool = False, n_boot: int = 1000,
                    tol: float = 0.1) -> Holdout:
    groups = group_students(points.student, tol)
    if len(np.unique(groups)) < 3:
        raise CapgapError(f"--holdout largest needs 3 or more student sizes (2 to fit the law on, "
                          f"1 to hold out); the results have {len(np.unique(groups))}")
    held = groups == groups.max()
    keep = ~held

    def subset(mask):
        return Points(points.teacher[mask], points.student[mask], points.value[mask],
                      points.seed[mask], points.metric)

    law = fit(subset(keep), higher_is_better, n_boot=n_boot, tol=tol)
    student = float(np.median(points.student[held]))
    teachers = np.unique(points.teacher[held])
    if len(teachers) < 2:
        raise CapgapError(f"the held-out student {format_size(student)} was measured with one "
                          "teacher only: no best teacher to compare with")
    sign = -1.0 if higher_is_better else 1.0
    means = np.array([sign * points.value[held & (points.teacher == t)].mean() for t in teachers])
    i = int(np.argmin(means))
    bracket = (float(teachers[max(i - 1, 0)]), float(teachers[min(i + 1, len(teachers) - 1)]))
    predicted, lo, hi = law.predict(student)
    j = int(np.argmin(np.abs(np.log(teachers) - np.log(max(predicted, 1.0)))))
    return Holdout(student, [s.student for s in law.sizes], predicted, (lo, hi),
                   float(teachers[i]), bracket, law, float(teachers[j]),
                   float(means[j] - means[i]))

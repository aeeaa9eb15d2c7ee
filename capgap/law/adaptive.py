"""The adaptive study: measure the capacity-gap curve only where its optimum is.

For each student size: start at the grid teacher nearest the optimum the current law
predicts, with its two grid neighbours; walk toward the better side until the best
measured teacher has two measured teachers on each side (fewer at the ends of the grid);
then replicate the bracket (the best and its two neighbours) with further seeds while the
bootstrap interval of the optimum over seeds is wider than one grid step or leaves open
which grid teacher is nearest the optimum. A full grid measures every teacher for every
student and seed; this measures the few that decide.

Why two on each side and not one: a real curve is not always unimodal. In the 2026-11-25
micro study the 1M student's loss was 3.877 from micro_m, 3.888 from micro_ml, 3.885 from
micro_l (3 seeds each): micro_ml, one teacher of a different shape, made a local optimum
at micro_l, and a walk that stopped at one neighbour a side settled there. One more
teacher a side (one seed each) costs a point or two per student and sees past one odd
teacher; replication stays on the immediate bracket.

Pure bookkeeping, no Hydra: the sweeper plugin (hydra_plugins/capgap_adaptive_sweeper)
launches the batches this asks for and hands back the jobs' objectives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from capgap.law.fit import paper_optimum
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size

Point = tuple[int, int, int]  # (student index, teacher index, seed index)


def check_students(students: list[float]) -> None:
    if len(students) < 2:
        raise CapgapError(f"the adaptive sweep needs 2 or more student sizes to fit a law; got "
                          f"{', '.join(format_size(s) for s in students) or 'none'}")


@dataclass
class AdaptiveSearch:
    teachers: list[float]  # sizes, ascending
    students: list[float]  # sizes
    n_seeds: int
    law: Callable[[float], float] = paper_optimum  # predicted T* for a student size
    n_boot: int = 200
    values: dict = field(default_factory=dict)  # Point -> objective (None: the job gave none)

    def __post_init__(self):
        if list(self.teachers) != sorted(self.teachers):
            raise ValueError("teachers must be sorted by size")
        check_students(self.students)
        self._rng = np.random.default_rng(0)

    def eligible(self, si: int) -> list[int]:
        """Teachers bigger than the student: the others cannot be pruned to it."""
        return [ti for ti, t in enumerate(self.teachers) if t > self.students[si]]

    def cell(self, si: int, ti: int) -> np.ndarray:
        return np.array([v for (s, t, _), v in self.values.items() if s == si and t == ti
                         and v is not None], dtype=float)

    def _asked(self, si: int, ti: int) -> int:
        return sum(1 for (s, t, _) in self.values if s == si and t == ti)

    def best(self, si: int) -> int | None:
        """The measured teacher with the lowest mean objective."""
        means = {ti: c.mean() for ti in self.eligible(si) if len(c := self.cell(si, ti))}
        return min(means, key=means.get) if means else None

    def _bracket(self, si: int, best: int, width: int = 1) -> list[int]:
        """The best teacher and up to `width` grid neighbours on each side."""
        grid = self.eligible(si)
        k = grid.index(best)
        return grid[max(k - width, 0):k + width + 1]

    def _unsettled(self, si: int, bracket: list[int]) -> bool:
        """Does the optimum need more seeds? Resampling the seeds of each bracket cell: yes
        when the best teacher changes in more than 5% of resamples, or when the 95% interval
        of the parabola's vertex in log T is wider than one grid step."""
        cells = [self.cell(si, ti) for ti in bracket]
        means = np.stack([c[self._rng.integers(0, len(c), (self.n_boot, len(c)))].mean(1)
                          for c in cells], 1)
        best = int(np.argmin([c.mean() for c in cells]))
        if np.mean(np.argmin(means, 1) != best) > 0.05:
            return True
        if len(bracket) < 3:  # an edge optimum: no vertex between grid points
            return False
        x = np.log([self.teachers[ti] for ti in bracket])
        y0, y1, y2 = means.T
        s01, s12 = (y1 - y0) / (x[1] - x[0]), (y2 - y1) / (x[2] - x[1])
        curv = (s12 - s01) / (x[2] - x[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = np.where(curv > 0, (x[0] + x[1]) / 2 - s01 / (2 * curv), x[1])
        vertex = np.clip(vertex, x[0], x[2])
        lo, hi = np.quantile(vertex, [0.025, 0.975])
        return hi - lo > min(x[1] - x[0], x[2] - x[1])

    def _wants(self, si: int) -> list[Point]:
        grid = self.eligible(si)
        if not grid:
            return []
        best = self.best(si)
        if best is None:
            if any(self._asked(si, ti) for ti in grid):
                return []  # asked and got nothing back: nothing to walk from
            guess = self.law(self.students[si])
            start = min(grid, key=lambda ti: abs(np.log(self.teachers[ti] / max(guess, 1.0))))
            return [(si, ti, 0) for ti in self._bracket(si, start)]
        bracket = self._bracket(si, best)
        walk = [(si, ti, 0) for ti in self._bracket(si, best, width=2) if not self._asked(si, ti)]
        if walk:
            return walk
        # bracketed: replicate where the optimum is not pinned to a grid step
        seeds = min(self._asked(si, ti) for ti in bracket)
        if seeds >= self.n_seeds:
            return []
        if seeds == 1 or self._unsettled(si, bracket):  # one seed has no spread to judge by
            return [(si, ti, k) for ti in bracket for k in range(self._asked(si, ti), seeds + 1)]
        return []

    def next_batch(self) -> list[Point]:
        """The points to measure next (all students at once, so a launcher runs them in
        parallel); empty when every student's optimum is bracketed and pinned."""
        return [p for si in range(len(self.students)) for p in self._wants(si)]

    def record(self, point: Point, value) -> None:
        self.values[point] = None if value is None else float(value)

    def grid_points(self) -> int:
        return sum(len(self.eligible(si)) for si in range(len(self.students))) * self.n_seeds

    def summary(self, teacher_names: list[str] | None = None) -> str:
        names = teacher_names or [format_size(t) for t in self.teachers]
        lines = ["adaptive sweep: best teacher per student"]
        for si, s in enumerate(self.students):
            b = self.best(si)
            grid = self.eligible(si)
            measured = [ti for ti in grid if self._asked(si, ti)]
            edge = b is not None and b in (grid[0], grid[-1])
            lines.append(f"  student {format_size(s)}: {names[b] if b is not None else 'none'}"
                         f"{' (edge of the grid)' if edge else ''}; measured "
                         f"{', '.join(f'{names[ti]}×{self._asked(si, ti)}' for ti in measured)}")
        run, grid = len(self.values), self.grid_points()
        lines.append(f"points run {run} of the full grid's {grid}: {grid - run} saved "
                     f"({100 * (grid - run) / max(grid, 1):.0f}%)")
        return "\n".join(lines)

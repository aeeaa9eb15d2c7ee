"""The second law model: distillation scaling (Busbridge et al., "Distillation Scaling
Laws", ICML 2025, arXiv 2502.08606, eq. 8). It predicts the student's loss from the
teacher's loss L_T, the student's size N_S and the distillation tokens D_S:

    L_S = L_T + L_T^(−c0) · (1 + (L_T / (L̃_S·d1))^(1/f1))^(−c1·f1) · (A'/N_S^α' + B'/D_S^β')^γ'

    L̃_S = E + A/N_S^α + B/D_S^β     (the student's supervised loss, eq. 1 with γ = 1)

The first term is the teacher; the last is how well a student of this size and data can
mimic a teacher; the middle one is the capacity gap, a broken power law in the ratio of
the teacher's loss to what the student could reach alone: a teacher much better than that
(L_T ≪ d1·L̃_S) leaves a gap of L_T^(−c0)·(…), one worse than that pulls the student to
itself. The gap is a ratio of losses, not of sizes, which is the point of the model.

Written from the paper's equation (the constants are ours to fit; the paper fits the
supervised law on separate supervised runs, which a capgap study does not have, so E, A,
B, α, β are fitted with the rest, and γ of eq. 1 is fixed at 1 to keep them identifiable).
The paper counts non-embedding parameters; capgap fits whatever the store's
student_params hold, as the capacity-gap law does. As published, the form cannot put a
student below its teacher (every term after L_T is positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize_scalar

from capgap.law.points import Points
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import format_size

NAMES = ("E", "A", "B", "alpha", "beta", "c0", "c1", "d1", "f1", "A'", "B'", "alpha'", "beta'",
         "gamma'")
LOGGED = {"A", "B", "d1", "f1", "A'", "B'"}  # positive scales, searched in log space
BOUNDS = {"alpha": (0.01, 2.0), "beta": (0.01, 2.0), "alpha'": (0.01, 2.0), "beta'": (0.01, 2.0),
          "gamma'": (0.05, 5.0), "c0": (-5.0, 10.0), "c1": (0.01, 20.0), "f1": (0.01, 20.0)}


def predict_loss(constants: dict, teacher_loss, student, tokens) -> np.ndarray:
    """Eq. 8 with the given constants (names as in NAMES)."""
    k = constants
    lt, n, d = (np.asarray(v, dtype=float) for v in (teacher_loss, student, tokens))
    supervised = k["E"] + k["A"] / n ** k["alpha"] + k["B"] / d ** k["beta"]
    gap = (1 + (lt / (supervised * k["d1"])) ** (1 / k["f1"])) ** (-k["c1"] * k["f1"])
    mimic = (k["A'"] / n ** k["alpha'"] + k["B'"] / d ** k["beta'"]) ** k["gamma'"]
    return lt + lt ** (-k["c0"]) * gap * mimic


@dataclass
class DistillationFit:
    constants: dict
    r2: float
    rms: float  # nats
    max_rel: float  # largest |error| / loss over the points
    n_points: int
    metric: str

    def predict(self, teacher_loss, student, tokens) -> np.ndarray:
        return predict_loss(self.constants, teacher_loss, student, tokens)

    def best_teacher_loss(self, student: float, tokens: float, bounds: tuple[float, float]) -> float:
        """The teacher loss that gives this student the lowest loss, within bounds."""
        r = minimize_scalar(lambda lt: float(self.predict(lt, student, tokens)), bounds=bounds,
                            method="bounded")
        return float(r.x)

    def to_dict(self) -> dict:
        return {"model": "distillation-scaling (Busbridge et al. 2025, eq. 8)",
                "constants": self.constants, "r2": self.r2, "rms": self.rms,
                "max_rel_error": self.max_rel, "n_points": self.n_points}

    def table(self) -> str:
        k = self.constants
        return "\n".join([
            f"distillation-scaling (Busbridge et al. 2025, eq. 8) over {self.n_points} points of {self.metric}:",
            "  L_S = L_T + L_T^-c0 · (1 + (L_T/(L̃_S·d1))^(1/f1))^(-c1·f1) · (A'/N^α' + B'/D^β')^γ',"
            "  L̃_S = E + A/N^α + B/D^β",
            "  " + "  ".join(f"{n} {k[n]:.4g}" for n in NAMES[:5]),
            "  " + "  ".join(f"{n} {k[n]:.4g}" for n in NAMES[5:]),
            f"  R² {self.r2:.4f}   RMS residual {self.rms:.4g}   largest relative error "
            f"{100 * self.max_rel:.2f}%"])


def _usable(points: Points):
    """(teacher_loss, student, tokens, loss) of the points the model can use, or one line
    that says what is missing."""
    n = len(points.value)
    lt = points.teacher_loss if points.teacher_loss is not None else np.full(n, np.nan)
    d = points.tokens if points.tokens is not None else np.full(n, np.nan)
    if np.isnan(lt).all():
        raise CapgapError("the distillation-scaling model needs the teacher's held-out loss: none "
                          "of the runs has it (store: extra['val/teacher_loss']; CSV: a teacher_loss column)")
    if np.isnan(d).all():
        raise CapgapError("the distillation-scaling model needs the distillation tokens: none of "
                          "the runs has them (store: tokens; CSV: a tokens column)")
    ok = np.isfinite(lt) & np.isfinite(d) & (d > 0) & (lt > 0)
    lt, s, d, y = lt[ok], points.student[ok], d[ok], points.value[ok]
    if len(np.unique(d)) < 2:
        raise CapgapError(f"the distillation-scaling model needs 2 or more distillation token "
                          f"budgets; these runs all used {format_size(d[0]) if len(d) else 'none'} "
                          "tokens (sweep distill.tokens)")
    if len(np.unique(s)) < 2:
        raise CapgapError("the distillation-scaling model needs 2 or more student sizes")
    if len(np.unique(np.round(lt, 6))) < 2:
        raise CapgapError("the distillation-scaling model needs 2 or more teachers (teacher losses)")
    if len(y) <= len(NAMES):
        raise CapgapError(f"too few points for the distillation-scaling model: {len(y)} runs with "
                          f"teacher loss and tokens for {len(NAMES)} constants")
    return lt, s, d, y


def fit_distillation(points: Points, starts: int = 4, seed: int = 0) -> DistillationFit:
    """Least-squares fit of eq. 8 to every point with a teacher loss and a token count;
    several starts (the surface has flat directions), the best kept."""
    lt, s, d, y = _usable(points)
    names = list(NAMES)
    # search bounds; the positive scales are searched in log space, unbounded but finite
    bounds = {n: (np.log(BOUNDS[n][0]), np.log(BOUNDS[n][1])) if n in LOGGED else BOUNDS[n]
              for n in BOUNDS}
    bounds.update({n: (-50.0, 50.0) for n in LOGGED if n not in BOUNDS})
    bounds["E"] = (0.0, float(y.min()))  # the irreducible loss lies below every measured loss
    lo, hi = [bounds[n][0] for n in names], [bounds[n][1] for n in names]

    def constants(x):
        return {n: float(np.exp(v)) if n in LOGGED else float(v) for n, v in zip(names, x)}

    def residuals(x):
        with np.errstate(all="ignore"):
            r = predict_loss(constants(x), lt, s, d) - y
        return np.where(np.isfinite(r), r, 1e3)

    rng = np.random.default_rng(seed)
    n_med, d_med = float(np.median(s)), float(np.median(d))
    best = None
    for i in range(starts):
        al, be, al2, be2 = rng.uniform(0.15, 0.6, 4) if i else (0.3, 0.3, 0.3, 0.3)
        gap = max(float(np.median(y - lt)), 1e-3)
        x0 = {"E": 0.5 * float(y.min()), "A": np.log(0.25 * y.min()) + al * np.log(n_med),
              "B": np.log(0.25 * y.min()) + be * np.log(d_med), "alpha": al, "beta": be,
              "c0": rng.uniform(0, 2) if i else 1.0, "c1": rng.uniform(0.3, 3) if i else 1.0,
              "d1": rng.uniform(-0.5, 0.5) if i else 0.0, "f1": rng.uniform(-1, 1) if i else 0.0,
              "A'": np.log(gap) + al2 * np.log(n_med), "B'": np.log(gap) + be2 * np.log(d_med),
              "alpha'": al2, "beta'": be2, "gamma'": 1.0}
        x0 = np.clip([x0[n] for n in names], np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        r = least_squares(residuals, x0, bounds=(lo, hi), method="trf", max_nfev=1000, x_scale="jac")
        if best is None or r.cost < best.cost:
            best = r
    k = constants(best.x)
    pred = predict_loss(k, lt, s, d)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return DistillationFit(k, r2, float(np.sqrt(np.mean((y - pred) ** 2))),
                           float(np.max(np.abs(pred - y) / y)), len(y), points.metric)

"""The joint fit of the capacity-gap surface over every measured point at once.

    m(T, S) = L(S) + c(S)·(log T − log T*(S))²,   T*(S) = a·S + b

with a floor L and a curvature c per student size. For a given (a, b) the per-student
L and c enter linearly, so they are solved exactly (weighted least squares, closed form)
and scipy's least_squares only searches the two shared parameters (variable projection,
Golub & Pereyra 1973): fast enough to refit hundreds of bootstrap resamples, and free of
the bad starts that 2 + 2·students free parameters would have.

Each (student, teacher) cell enters as the mean over its seeds, weighted by √n/σ with σ
the seed spread pooled over that student's cells. Optima outside the measured teachers
need no special case: the line carries them.

Uncertainty: a residual bootstrap. Each resample adds to the fitted surface the mean of n
seed deviations drawn from the student's pool (or, with one seed per cell, one of the fit's
residuals), inflated by the reduced χ² when the surface fits worse than the seed spread
says it should, and refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from capgap.errors import CapgapError

PRIOR_DOF = 10  # degrees of freedom the pooled seed spread counts for in each student's spread


@dataclass
class Cells:
    """One entry per measured (student size, teacher) pair; values lower-is-better."""
    group: np.ndarray  # index into student
    student: np.ndarray  # size per group
    teacher: np.ndarray
    values: list[np.ndarray]  # the seeds' values of each cell

    @property
    def mean(self) -> np.ndarray:
        return np.array([v.mean() for v in self.values])

    @property
    def n(self) -> np.ndarray:
        return np.array([len(v) for v in self.values])


@dataclass
class JointResult:
    a: float
    b: float
    floor: np.ndarray  # L per student
    curvature: np.ndarray  # c per student
    r2: float  # of the surface on the cell means (weighted)
    chi2: float  # reduced χ² against the seed spread (NaN with one seed per cell)
    samples: np.ndarray  # bootstrap (a, b)
    optima: np.ndarray  # bootstrap T*(S) per student: (n_boot, students)


def n_params(cells: Cells) -> int:
    return 2 + 2 * len(cells.student)


def _project(theta, cells: Cells, y, w, scale):
    """Residuals, floors and curvatures for a = theta[0], b = theta[1]·scale."""
    g = cells.group
    tstar = theta[0] * cells.student + theta[1] * scale
    # a line that gives a student no positive teacher is far off; keep the log finite and let
    # the residuals grow, so the search turns back
    tstar = np.maximum(tstar, 1e-3 * cells.student)
    x = (np.log(cells.teacher) - np.log(tstar[g])) ** 2
    w2 = w * w
    G = len(cells.student)
    sw, sx, sxx = (np.bincount(g, w2 * v, G) for v in (np.ones_like(x), x, x * x))
    sy, sxy = np.bincount(g, w2 * y, G), np.bincount(g, w2 * x * y, G)
    det = sw * sxx - sx * sx
    ok = det > 1e-12 * np.maximum(sw * sxx, 1e-300)
    c = np.where(ok, (sw * sxy - sx * sy) / np.where(ok, det, 1), 0.0)
    floor = (sy - c * sx) / sw
    return w * (y - floor[g] - c[g] * x), floor, c


def _solve(cells: Cells, y, w, starts, scale):
    best = None
    for a0, b0 in starts:
        r = least_squares(lambda th: _project(th, cells, y, w, scale)[0], [a0, b0 / scale],
                          x_scale=[1.0, 1.0], method="lm" if len(y) >= 2 else "trf")
        if best is None or r.cost < best.cost:
            best = r
    return best.x[0], best.x[1] * scale


def fit_joint(cells: Cells, starts: list[tuple[float, float]], n_boot: int = 1000,
              seed: int = 0) -> JointResult:
    P = n_params(cells)
    if len(cells.teacher) < P:
        raise CapgapError(
            f"too few points for the joint fit: {len(cells.teacher)} (student, teacher) pairs "
            f"for {P} parameters (a, b, and a floor and a curvature per student size); "
            "measure more teachers per student")
    G, g = len(cells.student), cells.group
    n, y = cells.n, cells.mean
    scale = float(np.median(cells.student))

    # seed spread per student, shrunk toward the spread pooled over all cells: with 2-3 seeds
    # a student's own estimate rests on a few degrees of freedom, and weights 1/σ² from so
    # few favour whichever student's spread came out small by chance
    dev = [v - v.mean() for v in cells.values]
    ss = np.bincount(g, [float(d @ d) for d in dev], G)
    dof = np.bincount(g, n - 1, G)
    replicated = dof.sum() > 0
    if replicated:
        pooled = max(ss.sum() / dof.sum(), 1e-24)
        sigma = np.sqrt((ss + PRIOR_DOF * pooled) / (dof + PRIOR_DOF))
        w = np.sqrt(n) / sigma[g]
    else:
        sigma, w = np.full(G, np.nan), np.ones_like(y)

    a, b = _solve(cells, y, w, starts, scale)
    res, floor, curv = _project([a, b / scale], cells, y, w, scale)
    fitted = y - res / w
    wm = np.sum(w * w * y) / np.sum(w * w)
    ss_tot = float(np.sum(w * w * (y - wm) ** 2))
    r2 = 1 - float(res @ res) / ss_tot if ss_tot > 0 else float("nan")
    dof_fit = len(y) - P
    chi2 = float(res @ res) / dof_fit if replicated and dof_fit > 0 else float("nan")
    if not replicated and dof_fit == 0:
        n_boot = 0  # exactly determined, one seed: no spread to resample from

    rng = np.random.default_rng(seed)
    if replicated:
        # one pool of standardised seed deviations (rescaled to unbiased spread: a mean of n
        # values has n−1 free ones); a resample's cell mean moves by σ_student times the mean
        # of n draws, more where the surface fits worse than the seeds say it should
        z = np.concatenate([d * np.sqrt(len(d) / (len(d) - 1)) / sigma[k]
                            for d, k in zip(dev, g) if len(d) > 1])
        scale_noise = sigma[g] * np.sqrt(max(1.0, np.nan_to_num(chi2))) / n
        mask = np.arange(n.max())[None, :] < n[:, None]
    else:
        resid = (y - fitted) * np.sqrt(len(y) / max(dof_fit, 1))
    samples, optima = [], []
    for _ in range(n_boot):
        if replicated:
            noise = (z[rng.integers(0, len(z), mask.shape)] * mask).sum(1) * scale_noise
        else:
            noise = rng.choice(resid, len(y))
        ab = _solve(cells, fitted + noise, w, [(a, b)], scale)
        samples.append(ab)
        optima.append(ab[0] * cells.student + ab[1])
    samples = np.array(samples).reshape(-1, 2) if samples else np.array([[a, b]])
    optima = np.array(optima).reshape(-1, G) if optima else (a * cells.student + b)[None]
    return JointResult(a, b, floor, curv, r2, chi2, samples, optima)

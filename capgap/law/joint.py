"""The joint fit of the capacity-gap surface over every measured point at once.

    m(T, S) = L(S) + c(S)·q(x),   x = log T − log T*(S),   T*(S) = a·S + b

with a floor L and a curvature c per student size and a curve shape q shared by the students
of one study (a family's curves look alike):

    parabola     q = x²                                   (the surface capgap first fitted)
    skew+cubic   q = x²·e^(∓η/2) (x < 0 / x ≥ 0) + δ·x³    (either side steeper; a cubic bend)

For given (a, b, η, δ) the per-student L and c enter linearly, so they are solved exactly
(weighted least squares, closed form) and scipy's Levenberg-Marquardt (leastsq) searches only the shared
parameters (variable projection, Golub & Pereyra 1973).

Why this estimator (tests/test_law_calibration.py, docs/calibration.md): on planted laws
whose curves are skewed, bent and noisier away from the optimum, the parabola puts the slope
~10% off and its interval covers the planted slope in under half the draws. What won, over
the whole family:
- shape "auto": the parabola or skew+cubic, whichever has the lower AICc (a symmetric
  curve keeps the parabola's precision; a skewed one gets the shape it needs);
- weights from a noise model fitted to the residuals, sd = s0 + s1·|x|: points far from the
  optimum, where noise and any leftover misfit grow, count less (a window chosen by the data);
- intervals from a bootstrap that resamples whole students and flips the signs of the
  cells' residuals (wild bootstrap), redoing the shape choice in each resample: misfit that
  differs from student to student widens the interval instead of biasing it unseen.
The first estimator (parabola, weights from the seed spread, a residual bootstrap of the
seeds) stays available as TODAY, for the comparison the calibration prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import leastsq, nnls

from capgap.runtime.errors import CapgapError

PRIOR_DOF = 10  # degrees of freedom the pooled seed spread counts for in each student's spread
SHAPES = {"parabola": 0, "skew+cubic": 2}  # shape -> how many shared shape parameters
ETA_MAX = 4.0  # |η|: one side up to e⁴ ≈ 55× steeper than the other; keeps exp() finite


@dataclass(frozen=True)
class Estimator:
    shape: str = "auto"  # a key of SHAPES, or auto (the lower AICc)
    weights: str = "noise-model"  # noise-model (sd = s0 + s1·|x| from residuals) | seeds
    bootstrap: str = "students"  # students (whole students + wild signs) | wild | seeds

    @property
    def name(self) -> str:
        return f"{self.shape}, {self.weights} weights, {self.bootstrap} bootstrap"


ROBUST = Estimator()
TODAY = Estimator("parabola", "seeds", "seeds")  # the joint fit before issue 18


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
    shape: str  # the curve model used
    shape_params: tuple  # (η, δ) of skew+cubic; () for the parabola
    r2: float  # of the surface on the cell means (weighted)
    chi2: float  # reduced χ² against the seed spread (NaN with one seed per cell)
    chi2_student: np.ndarray  # the same per student: which curves fit worst
    samples: np.ndarray  # bootstrap (a, b)
    optima: np.ndarray  # bootstrap T*(S) per student: (n_boot, students)
    noise_samples: np.ndarray | None = None  # (a, b) from seed noise alone, when misfit is large
    shapes_tried: tuple = ()  # the curve models the points allowed, of which `shape` won


def q(x: np.ndarray, shape_params) -> np.ndarray:
    """The shared curve shape at x = log T − log T*."""
    if len(shape_params) == 0:
        return x * x
    eta = float(np.clip(shape_params[0], -ETA_MAX, ETA_MAX))
    return x * x * np.where(x < 0, np.exp(-eta / 2), np.exp(eta / 2)) + shape_params[1] * x ** 3


def n_params(cells: Cells, shape: str = "parabola") -> int:
    return 2 + SHAPES[shape] + 2 * len(cells.student)


def _project(theta, g, student, log_t, y, w, scale):
    """Weighted residuals and fitted values for a = theta[0], b = theta[1]·scale, shape
    parameters theta[2:]; the floors and curvatures per student in closed form."""
    G = len(student)
    # a line that gives a student no positive teacher is far off; keep the log finite and let
    # the residuals grow, so the search turns back
    tstar = np.maximum(theta[0] * student + theta[1] * scale, 1e-3 * student)
    x = q(log_t - np.log(tstar[g]), theta[2:])
    w2 = w * w
    sw, sx, sxx = (np.bincount(g, w2 * v, G) for v in (np.ones_like(x), x, x * x))
    sy, sxy = np.bincount(g, w2 * y, G), np.bincount(g, w2 * x * y, G)
    det = sw * sxx - sx * sx
    ok = det > 1e-12 * np.maximum(sw * sxx, 1e-300)
    c = np.where(ok, (sw * sxy - sx * sy) / np.where(ok, det, 1), 0.0)
    floor = (sy - c * sx) / sw
    fitted = floor[g] + c[g] * x
    return w * (y - fitted), fitted, floor, c


def _solve(g, student, log_t, y, w, starts, scale, shape):
    """(theta with b in parameters, cost) of the best start; theta = (a, b, *shape params)."""
    k = SHAPES[shape]
    best, best_rss = None, np.inf

    def residuals(th):
        return np.nan_to_num(_project(th, g, student, log_t, y, w, scale)[0], nan=1e6)

    with np.errstate(all="ignore"):
        for start in starts:
            x0 = [start[0], start[1] / scale] + (list(start[2:2 + k]) if len(start) >= 2 + k else [0.0] * k)
            # MINPACK's Levenberg-Marquardt directly: least_squares(method="lm") is the same
            # solver behind ~3 ms of setup per call, which the bootstrap pays thousands of times
            # full_output: a search that hits maxfev is judged by its RSS below, not warned about
            x = np.atleast_1d(leastsq(residuals, x0, full_output=True)[0])
            rss = float(np.sum(residuals(x) ** 2))
            if rss < best_rss:
                best, best_rss = x, rss
    theta = np.array(best, dtype=float)
    theta[1] *= scale
    return theta, best_rss


def _aicc(rss: float, n: int, p: int) -> float:
    if n - p - 1 <= 0:
        return np.inf
    return n * np.log(max(rss, 1e-300) / n) + 2 * p + 2 * p * (p + 1) / (n - p - 1)


def _admissible(n_cells: int, G: int, shape: str) -> bool:
    return n_cells - (2 + SHAPES[shape] + 2 * G) - 1 > 0


def _choose(g, student, log_t, y, w, starts, scale, shapes):
    """(shape, theta) of the lowest AICc among the shapes (their weighted RSS, same weights)."""
    if len(shapes) == 1:
        return shapes[0], _solve(g, student, log_t, y, w, starts, scale, shapes[0])[0]
    best = None
    for shape in shapes:
        theta, rss = _solve(g, student, log_t, y, w, starts, scale, shape)
        score = _aicc(rss, len(y), 2 + SHAPES[shape] + 2 * len(student))
        if best is None or score < best[0]:
            best = (score, shape, theta)
    return best[1], best[2]


def _noise_model(x, resid, n):
    """sd of a cell mean's residual as s0 + s1·|x| (non-negative least squares on |residual|,
    ×√(π/2) for a normal's mean absolute value), per cell."""
    r = np.abs(resid) * np.sqrt(n) * np.sqrt(np.pi / 2)
    A = np.stack([np.ones_like(x), np.abs(x)], 1)
    coef, _ = nnls(A, r)
    floor = max(coef[0], 0.05 * float(r.mean()), 1e-12)  # no cell weighs more than 20× the mean
    return np.maximum(A @ coef, floor) / np.sqrt(n)


def fit_joint(cells: Cells, starts: list[tuple[float, float]], n_boot: int = 1000,
              seed: int = 0, estimator: Estimator = ROBUST) -> JointResult:
    G, g = len(cells.student), cells.group
    shapes = list(SHAPES) if estimator.shape == "auto" else [estimator.shape]
    # too few cells for AICc to compare shapes: the one with the fewest parameters, which an
    # exactly determined fit (as many cells as parameters) can still give
    shapes = [s for s in shapes if _admissible(len(cells.teacher), G, s)] or [min(shapes, key=SHAPES.get)]
    P = n_params(cells, shapes[0])
    if len(cells.teacher) < P:
        raise CapgapError(
            f"too few points for the joint fit: {len(cells.teacher)} (student, teacher) pairs "
            f"for {P} parameters (a, b, and a floor and a curvature per student size); "
            "measure more teachers per student")
    n, y, log_t = cells.n, cells.mean, np.log(cells.teacher)
    scale = float(np.median(cells.student))

    # seed spread per student, shrunk toward the spread pooled over all cells: with 2-3 seeds
    # a student's own estimate rests on a few degrees of freedom
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
    seed_w = w

    theta, _ = _solve(g, cells.student, log_t, y, w, starts, scale, shapes[-1])
    if estimator.weights == "noise-model":
        for _ in range(2):  # weights from the richest shape's residuals, then refit
            _, fitted, _, _ = _project(theta, g, cells.student, log_t, y, w, 1.0)
            x = log_t - np.log(np.maximum(theta[0] * cells.student + theta[1], 1e-3 * cells.student))[g]
            w = 1 / _noise_model(x, y - fitted, n)
            theta, _ = _solve(g, cells.student, log_t, y, w, [theta, *starts], scale, shapes[-1])
    shape, theta = _choose(g, cells.student, log_t, y, w, [theta, *starts], scale, shapes)
    a, b, shape_params = float(theta[0]), float(theta[1]), tuple(float(v) for v in theta[2:])
    res, fitted, floor, curv = _project(theta, g, cells.student, log_t, y, w, 1.0)
    wm = np.sum(w * w * y) / np.sum(w * w)
    ss_tot = float(np.sum(w * w * (y - wm) ** 2))
    r2 = 1 - float(res @ res) / ss_tot if ss_tot > 0 else float("nan")
    P = n_params(cells, shape)
    dof_fit = len(y) - P
    # misfit against the seed spread, whatever the weights the fit used
    seed_res = seed_w * (y - fitted)
    chi2 = float(seed_res @ seed_res) / dof_fit if replicated and dof_fit > 0 else float("nan")
    cells_per = np.bincount(g, minlength=G)
    chi2_student = (np.bincount(g, seed_res ** 2, G) / np.maximum(cells_per - 2, 1)
                    if replicated else np.full(G, np.nan))
    if not replicated and dof_fit == 0:
        n_boot = 0  # exactly determined, one seed: no spread to resample from

    boot = _Bootstrap(cells, g, log_t, y, fitted, w, n, dev, sigma, chi2, dof_fit, replicated,
                      scale, shapes, theta, np.random.default_rng(seed))
    samples = boot.run(estimator.bootstrap, n_boot)
    noise_samples = None
    if estimator.bootstrap != "seeds" and replicated and chi2 > 2 and n_boot:
        # what seed noise alone would give: the yardstick the misfit line compares against
        noise_samples = boot.run("seeds", min(n_boot, 200), chi2_inflate=False)
    if len(samples) == 0:
        samples = np.array([[a, b]])
    optima = samples[:, :1] * cells.student[None] + samples[:, 1:2]
    return JointResult(a, b, floor, curv, shape, shape_params, r2, chi2, chi2_student,
                       samples, optima, noise_samples, tuple(shapes))


@dataclass
class _Bootstrap:
    cells: Cells
    g: np.ndarray
    log_t: np.ndarray
    y: np.ndarray
    fitted: np.ndarray
    w: np.ndarray
    n: np.ndarray
    dev: list
    sigma: np.ndarray
    chi2: float
    dof_fit: int
    replicated: bool
    scale: float
    shapes: list
    theta: np.ndarray
    rng: np.random.Generator

    def run(self, kind: str, n_boot: int, chi2_inflate: bool = True) -> np.ndarray:
        """(n_boot, 2) bootstrap (a, b)."""
        G, g, rng = len(self.cells.student), self.g, self.rng
        raw = (self.y - self.fitted) * np.sqrt(len(self.y) / max(self.dof_fit, 1))
        if kind == "seeds" and self.replicated:
            # one pool of standardised seed deviations (rescaled to unbiased spread); a
            # resample's cell mean moves by σ_student times the mean of n draws, more where
            # the surface fits worse than the seeds say it should (unless asked not to)
            z = np.concatenate([d * np.sqrt(len(d) / (len(d) - 1)) / self.sigma[k]
                                for d, k in zip(self.dev, g) if len(d) > 1])
            inflate = np.sqrt(max(1.0, np.nan_to_num(self.chi2))) if chi2_inflate else 1.0
            scale_noise = self.sigma[g] * inflate / self.n
            mask = np.arange(self.n.max())[None, :] < self.n[:, None]
        members = [np.flatnonzero(g == j) for j in range(G)]
        out, tries = [], 0
        while len(out) < n_boot and tries < 20 * n_boot:
            tries += 1
            if kind == "seeds":
                noise = ((z[rng.integers(0, len(z), mask.shape)] * mask).sum(1) * scale_noise
                         if self.replicated else rng.choice(raw, len(self.y)))
            else:  # wild: each cell's residual, its sign flipped at random
                noise = raw * rng.choice([-1.0, 1.0], len(self.y))
            y = self.fitted + noise
            if kind == "students" and G >= 3:
                pick = rng.integers(0, G, G)
                # 3 distinct sizes: a resample of fewer leaves the line loose. With 3 sizes that
                # is every resample (wild signs only); the calibration family has 4-6
                if len(np.unique(pick)) < 3:
                    continue
                idx = np.concatenate([members[j] for j in pick])
                gg = np.repeat(np.arange(G), [len(members[j]) for j in pick])
                student, log_t, y, w = self.cells.student[pick], self.log_t[idx], y[idx], self.w[idx]
            else:
                gg, student, log_t, w = g, self.cells.student, self.log_t, self.w
            shapes = [s for s in self.shapes if _admissible(len(y), G, s)] or self.shapes[:1]
            shape, theta = _choose(gg, student, log_t, y, w, [self.theta], self.scale, shapes)
            out.append(theta[:2])
        return np.array(out).reshape(-1, 2)

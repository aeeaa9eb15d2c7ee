"""Results generated from a known law, for the law tests and the notebook test."""

import numpy as np

STUDENTS = (20e6, 50e6, 100e6, 200e6, 400e6)
TEACHERS = tuple(np.geomspace(25e6, 3e9, 14))


def law_rows(a=2.5, b=-10e6, students=STUDENTS, teachers=TEACHERS, seeds=3, noise=0.01,
             rng_seed=0):
    """Store rows whose loss is a parabola in log T around T* = a·S + b, plus noise.

    The loss floor falls with student size, as real students' losses do, so curves of
    different students do not coincide.
    """
    rng = np.random.default_rng(rng_seed)
    rows = []
    for s in students:
        best = a * s + b
        for t in teachers:
            if t <= s:  # a teacher must be bigger than its student
                continue
            for seed in range(seeds):
                loss = 3 - 0.2 * np.log(s / 1e8) + 0.5 * np.log(t / best) ** 2
                rows.append(dict(config_hash=f"{s:.0f}-{t:.0f}-{seed}", status="done",
                                 teacher=f"t{t / 1e6:.0f}m", teacher_params=int(t),
                                 student_params=int(s), metric_name="val_loss",
                                 metric=float(loss + rng.normal(0, noise)), seed=seed))
    return rows


# a discrete zoo with the gaps real families have (Pythia and GPT-2 sizes)
ZOO = (70e6, 124e6, 160e6, 355e6, 410e6, 774e6, 1.0e9, 1.4e9, 1.5e9, 2.8e9, 6.9e9, 12e9)


def planted_law(rng):
    """A random planted law and a study of it: returns (a, b, rows).

    Slope 1.5–4, intercept ±10M, 4–6 student sizes in 20M–500M, 1–3 seeds, curvature
    0.2–0.6 nats per (log T)² and seed noise 0.005–0.02 nats (the spread of real runs:
    the micro study's curves change by 0.05–0.2 nats between neighbouring teachers).
    """
    a, b = rng.uniform(1.5, 4.0), rng.uniform(-10e6, 10e6)
    k = int(rng.integers(4, 7))  # sizes spread out, jittered: never one size twice
    students = np.log(np.geomspace(20e6, 500e6, k)) + rng.uniform(-0.15, 0.15, k)
    seeds, noise = int(rng.integers(1, 4)), rng.uniform(0.005, 0.02)
    rows = []
    for s in np.exp(students):
        best, curv = a * s + b, rng.uniform(0.2, 0.6)
        for t in ZOO:
            if t <= s:
                continue
            for seed in range(seeds):
                loss = 3 - 0.2 * np.log(s / 1e8) + curv * np.log(t / best) ** 2
                rows.append(dict(teacher_params=int(t), student_params=int(s), seed=seed,
                                 metric_name="val_loss",
                                 metric=float(loss + rng.normal(0, noise))))
    return a, b, rows


def with_config(rows, study="default", **setting):
    """Rows as task=study writes them: a study name and the full resolved config, whose
    teacher, student size, seed and bookkeeping (paths, store) differ from row to row."""
    out = []
    for i, r in enumerate(rows):
        config = {"task": "study", "seed": r["seed"], "study": study,
                  "teacher": {"name": r["teacher"], "params": r["teacher_params"]},
                  "student": {"init": "pruned", "size": str(r["student_params"])},
                  "distill": {"tokens": 1000, "loss": {"name": "fkl", "alpha": 0.5}},
                  "paths": {"run_dir": f"/runs/{i}"}, "store": {"url": "x.sqlite"},
                  "trainer": {"precision": "32", "enable_progress_bar": i % 2 == 0}}
        for key, value in setting.items():
            group, name = key.split("__")
            config[group][name] = value
        out.append(dict(r, study=study, config=config, config_hash=f"{study}-{r['config_hash']}"))
    return out


def misspecified_law(rng, symmetric: bool | None = None):
    """A planted law whose curves are not the parabola any estimator assumes: returns
    (a, b, rows, info), info = {"symmetric": …, "edge": …}.

    The optimum lies exactly on T* = a·S + b (slope 1.5–4, intercept ±10M), 4–6 students in
    20M–500M. Around it each student's loss, in x = log(T/T*), is
        L(S) + c_l·x² (x < 0) or c_r·x² (x > 0)  +  d·x³
    with c_r/c_l = skew in 1/3–3 (either side steeper; 1 in the symmetric third of the draws)
    and a cubic d up to 40% of the quadratic at the grid's far end (0 when symmetric), kept
    small enough that the curve still rises on both sides over the grid. Skew and cubic are
    drawn once per study (a family's curves look alike, so their errors add up rather than
    cancel) and jittered per student (skew by up to ×/÷1.3, cubic by ±0.1 of its range). Seed noise grows
    with |x|: 0.002–0.005 nats at the optimum, rising by 0.005–0.02 per unit of |x| up to
    0.03 far from it. 1–3 seeds, 0–15% of
    the runs missing (failed), and a geometric teacher grid of 10–14 sizes placed so that
    in a third of the draws the smallest student's optimum lies near the grid's lower edge,
    in a third the largest student's near its upper edge.
    """
    a, b = rng.uniform(1.5, 4.0), rng.uniform(-10e6, 10e6)
    k = int(rng.integers(4, 7))
    students = np.exp(np.log(np.geomspace(20e6, 500e6, k)) + rng.uniform(-0.15, 0.15, k))
    optima = a * students + b
    symmetric = bool(rng.random() < 1 / 3) if symmetric is None else symmetric
    edge = ("inner", "low", "high")[int(rng.integers(0, 3))]
    lo = optima.min() / (rng.uniform(1.0, 1.4) if edge == "low" else rng.uniform(2.0, 4.0))
    hi = optima.max() * (rng.uniform(1.0, 1.4) if edge == "high" else rng.uniform(2.0, 4.0))
    teachers = np.geomspace(lo, hi, int(rng.integers(10, 15)))
    seeds, missing = int(rng.integers(1, 4)), rng.uniform(0.0, 0.15)
    sigma0, growth = rng.uniform(0.002, 0.005), rng.uniform(0.005, 0.02)
    log_skew, cubic = (0.0, 0.0) if symmetric else (rng.uniform(np.log(1 / 3), np.log(3)),
                                                     rng.uniform(-0.3, 0.3))
    rows = []
    for s, best in zip(students, optima):
        c = rng.uniform(0.2, 0.6)
        skew = 1.0 if symmetric else float(np.exp(np.clip(
            log_skew + rng.uniform(-0.26, 0.26), np.log(1 / 3), np.log(3))))
        c_l, c_r = c / np.sqrt(skew), c * np.sqrt(skew)
        x_all = np.log(teachers[teachers > s] / best)
        span = max(np.abs(x_all).max(), 0.5)
        # |d·x| ≤ 0.4·min(c)·|x|/span: the cubic bends the far end by up to 40%, never turns it
        d = 0.0 if symmetric else np.clip(cubic + rng.uniform(-0.1, 0.1), -0.4, 0.4) * min(c_l, c_r) / span
        floor = 3 - 0.2 * np.log(s / 1e8)
        for t, x in zip(teachers[teachers > s], x_all):
            mean = floor + (c_l if x < 0 else c_r) * x * x + d * x ** 3
            sd = min(0.03, sigma0 + growth * abs(x))
            for seed in range(seeds):
                if rng.random() < missing:
                    continue
                rows.append(dict(teacher_params=int(t), student_params=int(s), seed=seed,
                                 metric_name="val_loss", metric=float(mean + rng.normal(0, sd))))
    return a, b, rows, {"symmetric": symmetric, "edge": edge}

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

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

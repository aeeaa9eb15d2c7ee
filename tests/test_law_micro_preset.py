"""experiment=micro_law is a measurement design: 3 seeds, and for every student size measured
teachers on both sides of the optimum that the last micro study's joint fit predicts."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from capgap.law.fit import fit, points_from_rows
from capgap.runtime.sizes import parse_size

ROOT = Path(__file__).parents[1]


def test_micro_law_brackets_every_predicted_optimum():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=micro_law"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["seed"] == "0,1,2"
    teachers = []
    for name in params["teacher"].split(","):
        teachers.append(parse_size(str((ROOT / "conf" / "teacher" / f"{name}.yaml").read_text()
                                       .split("\nparams: ")[1].split()[0])))
    # the law as last measured on this family (docs/micro_law/fit.json)
    last = json.loads((ROOT / "docs" / "micro_law" / "fit.json").read_text())
    rows = [dict(teacher_params=t, student_params=s["student_params"], metric=m, seed=0,
                 metric_name=last["metric"]) for s in last["sizes"]
            for t, m in zip(s["teacher_params"], s["metric"])]
    law = fit(points_from_rows(rows, "docs/micro_law/fit.json"), n_boot=1)
    for size in params["student.size"].split(","):
        s = parse_size(size)
        above = [t for t in teachers if t > s]
        t_star = law.a * s + law.b
        assert min(above) < t_star < max(above), (size, t_star, above)

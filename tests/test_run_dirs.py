"""Run folders say what ran: teacher.path's folder when it overrides teacher=, and the student
size in a sweep's job folders (resolved as Hydra resolves them, from the real config)."""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run  # noqa: E402  (registers the capgap_name resolver, as `python run.py` does)


def folders(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    return Path(OmegaConf.select(cfg, "hydra.run.dir")).parts, OmegaConf.select(cfg, "hydra.sweep.subdir")


def test_run_and_sweep_folders_name_the_model_and_the_student_size():
    (_, task, name, _), subdir = folders("teacher=pythia_410m")
    assert (task, name, subdir) == ("study", "pythia_410m", "3_study_pythia_410m")
    (_, _, name, _), subdir = folders("teacher=pythia_410m", "teacher.path=/models/my-pythia", "student.size=30M")
    assert name == "my-pythia" and subdir == "3_study_my-pythia_30M"
    assert run.run_name("micro_s", None, None) == "micro_s"

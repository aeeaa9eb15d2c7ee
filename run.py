"""Hydra entry point: compose the config, run one task, return its metric to Hydra.

    python run.py                                   # the offline default
    python run.py -m teacher=micro_xs,micro_s task=pretrain
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from capgap.models import teacher_name
from capgap.runtime.errors import CapgapError
from capgap.runtime.schema import check_overrides


def run_name(teacher: str, path: str | None = None, *more) -> str:
    """A run folder's name: the teacher (teacher.path's folder when it overrides teacher=),
    then what a sweep varies (student.size), leaving out what is unset."""
    parts = [teacher_name({"name": teacher, "path": path}), *(str(m) for m in more if m not in (None, ""))]
    return "_".join(parts)


OmegaConf.register_new_resolver("capgap_name", run_name, replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from capgap.runtime import terminal
    from capgap.tasks import run_task

    terminal.setup()
    try:
        metrics = run_task(cfg)
    except CapgapError as e:
        print(f"capgap: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    # the value Hydra sweepers optimise; lower is better
    return metrics.get("objective")


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except CapgapError as e:
        print(f"capgap: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    main()

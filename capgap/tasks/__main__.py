"""`python -m capgap.tasks CONFIG.yaml`: run one job from its resolved config. How
capgap.runtime.distributed starts a job's local ranks 1..N-1: they run the job rank 0 runs, however
rank 0 was started (run.py, a multirun, submitit, a notebook)."""

import sys
import warnings

from omegaconf import OmegaConf

from capgap.runtime import terminal
from capgap.runtime.errors import CapgapError
from capgap.tasks import run_task


def main(path: str) -> int:
    cfg = OmegaConf.load(path)
    terminal.setup()
    # rank 0 shows (and logs in run.log) the same warnings; N copies on one terminal help nobody
    warnings.simplefilter("ignore")
    try:
        run_task(cfg)
    except CapgapError as e:  # rank 0 says it (its own, or this rank's failure): one line, not N
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

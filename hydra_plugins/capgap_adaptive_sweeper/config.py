"""`hydra/sweeper=capgap_adaptive`, registered in Hydra's ConfigStore (no yaml in conf/: a yaml
of the same name would shadow this and trip Hydra's deprecated same-name schema matching).
Its defaults are capgap's keys, so run.py needs no settings:

    python run.py -m hydra/sweeper=capgap_adaptive teacher=micro_xs,micro_s,micro_m,micro_ml,micro_l,micro_xl \
        student.size=250K,600K,1M seed=0,1,2
"""

from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class CapgapAdaptiveSweeperConf:
    _target_: str = "hydra_plugins.capgap_adaptive_sweeper.adaptive_sweeper.CapgapAdaptiveSweeper"
    # what to sweep, as the basic sweeper takes it: teacher choices, student sizes, seeds
    params: Optional[Dict[str, str]] = None
    teacher_key: str = "teacher"  # the config group of the teachers
    teacher_size_key: str = "teacher.params"  # where a composed config holds the teacher's size
    student_key: str = "student.size"
    seed_key: str = "seed"  # its values are the replicates, used in order as needed
    # the store config (kind, url) and study whose fit gives the starting law (else the paper's)
    store_key: Optional[str] = "store"
    study_key: Optional[str] = "study"


ConfigStore.instance().store(group="hydra/sweeper", name="capgap_adaptive",
                             node=CapgapAdaptiveSweeperConf, provider="capgap")

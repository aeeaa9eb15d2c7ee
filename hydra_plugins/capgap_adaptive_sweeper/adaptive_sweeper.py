"""Hydra glue for capgap.law.adaptive: read the sweep, launch each batch the search asks
for through the configured launcher, feed the jobs' return values (the objective, lower is
better) back, print what the full grid would have cost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from capgap.runtime.errors import CapgapError

from .config import CapgapAdaptiveSweeperConf  # noqa: F401  registers the config


class CapgapAdaptiveSweeper(Sweeper):
    def __init__(self, params: Optional[Dict[str, str]] = None, teacher_key: str = "teacher",
                 teacher_size_key: str = "teacher.params", student_key: str = "student.size",
                 seed_key: str = "seed", store_key: Optional[str] = "store",
                 study_key: Optional[str] = "study") -> None:
        self.params = dict(params or {})
        self.teacher_key, self.teacher_size_key = teacher_key, teacher_size_key
        self.student_key, self.seed_key = student_key, seed_key
        self.store_key, self.study_key = store_key, study_key
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        try:
            return self._sweep(arguments)
        except CapgapError as e:  # one line and exit 2, as everywhere in capgap
            print(f"capgap: error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(e.exit_code)

    def _split(self, arguments: List[str]) -> tuple[dict, list[str]]:
        """{key: [values]} of the swept keys, and the overrides every job gets."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + arguments)
        swept, fixed = {}, []
        for o in overrides:
            key = o.get_key_element()
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise CapgapError(f"{key}: capgap_adaptive takes lists of values (a,b,c), "
                                      "not ranges or intervals")
                swept[key] = list(o.sweep_string_iterator())
            else:
                swept_one = key in (self.teacher_key, self.student_key, self.seed_key)
                if swept_one:
                    swept[key] = [o.get_value_element_as_str()]
                else:
                    fixed.append(f"{key}={o.get_value_element_as_str()}")
        if other := sorted(set(swept) - {self.teacher_key, self.student_key, self.seed_key}):
            raise CapgapError(f"capgap_adaptive sweeps {self.teacher_key}, {self.student_key} and "
                              f"{self.seed_key} only; {', '.join(other)} has several values "
                              "(run one adaptive sweep per value)")
        return swept, fixed

    def _law(self, job: DictConfig):
        """T* for a student size: the fit of the sweep's study in its store when there is one,
        else the paper's. `job`: a job's composed config (every job has the same store and study)."""
        from capgap.law import store as law_store
        from capgap.law.fit import paper_optimum
        from capgap.law.studies import DEFAULT
        from capgap.law.study_fit import study_law

        store_cfg = OmegaConf.select(job, self.store_key) if self.store_key else None
        if isinstance(store_cfg, str):  # a store_key naming the url itself, as it once did
            store_cfg = OmegaConf.create({"url": store_cfg})
        study = (OmegaConf.select(job, self.study_key) if self.study_key else None) or DEFAULT
        if store_cfg is not None:
            try:
                path = law_store.sqlite_path(store_cfg.get("url") or law_store.default_url())
                # looking must not create a SQLite file the study has not written yet
                if path is None or path.exists():
                    law = study_law(law_store.from_config(store_cfg), study, n_boot=1)
                    print(f"[capgap] adaptive sweep starts from the law of study {study}: {law.line()}")
                    return lambda s: law.a * s + law.b if law.a * s + law.b > s else paper_optimum(s)
            except CapgapError:
                pass
        print("[capgap] adaptive sweep starts from the paper's law (no fit of your own yet)")
        return paper_optimum

    def _sweep(self, arguments: List[str]) -> Any:
        from capgap.law.adaptive import AdaptiveSearch, check_students
        from capgap.runtime.sizes import parse_size

        swept, fixed = self._split(arguments)
        for key in (self.teacher_key, self.student_key):
            if key not in swept:
                raise CapgapError(f"capgap_adaptive needs {key} listed (e.g. {key}=a,b,c)")
        students = [(parse_size(v), v) for v in swept[self.student_key]]
        check_students([s for s, _ in students])  # before composing anything
        loader = self.hydra_context.config_loader
        teachers, job = [], None
        for choice in swept[self.teacher_key]:
            cfg = loader.load_sweep_config(self.config, fixed + [f"{self.teacher_key}={choice}"])
            job = cfg if job is None else job
            size = OmegaConf.select(cfg, self.teacher_size_key)
            if size is None:
                raise CapgapError(f"{self.teacher_key}={choice} has no {self.teacher_size_key}: "
                                  "the adaptive sweep orders teachers by size")
            teachers.append((parse_size(size), choice))
        teachers.sort()
        seeds = swept.get(self.seed_key, [None])
        search = AdaptiveSearch([t for t, _ in teachers], [s for s, _ in students], len(seeds),
                                law=self._law(job))

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, job_idx = [], 0
        while batch := search.next_batch():
            overrides = [fixed + [f"{self.teacher_key}={teachers[ti][1]}",
                                  f"{self.student_key}={students[si][1]}"]
                         + ([] if seeds[k] is None else [f"{self.seed_key}={seeds[k]}"])
                         for si, ti, k in batch]
            self.validate_batch_is_legal(overrides)
            results = self.launcher.launch(overrides, initial_job_idx=job_idx)
            job_idx += len(results)
            for point, r in zip(batch, results):
                search.record(point, r.return_value)  # a failed job raises here, as in the basic sweeper
            returns.append(results)
        print(search.summary([name for _, name in teachers]))
        return returns

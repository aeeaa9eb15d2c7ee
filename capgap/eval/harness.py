"""Downstream benchmarks through lm-evaluation-harness, run on the model object.

The model object rather than a folder: it runs before the student is saved, and on every
family capgap prunes (lm-eval's HFLM takes a loaded PreTrainedModel as it is). Figures come
back flat, `harness/<task>/<metric>`, ready for metrics.json, TensorBoard and the store row,
with `higher_is_better` beside them so `capgap fit --metric` knows which way is better.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import announce

PREFIX = "harness/"
HIGHER_IS_BETTER = f"{PREFIX}higher_is_better"  # {figure: bool}; capgap.law.points reads it from store rows
_loaded: set = set()  # (manager, task) whose data loaded once in this process


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise CapgapError(f"eval.tasks needs lm-evaluation-harness, which is not importable here ({e}); "
                          "install it with pip install -e \".[eval]\"") from None
    return lm_eval, HFLM, TaskManager


@functools.lru_cache(maxsize=8)
def _manager(include_path: str | None, include_defaults: bool = True):
    # indexing every task lm-eval ships takes 5-15 s: once per process (a multirun's jobs share it)
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager with the user's own task folder, every name in `tasks` checked."""
    _lm_eval()
    if not tasks:
        raise CapgapError("eval.tasks is empty: name at least one lm-evaluation-harness task, "
                          "e.g. eval.tasks=[hellaswag]")
    if include_path is not None and not Path(include_path).is_dir():
        raise CapgapError(f"eval.include_path={include_path} is not a folder of task YAML files")
    path = str(Path(include_path).resolve()) if include_path else None
    manager = _manager(path, include_defaults=False) if path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = _manager(path)  # only when a task is not the user's own: the slow index
    known = set(manager.all_tasks)  # tasks, groups and tags
    for name in tasks:
        if name not in known:
            where = f" nor in eval.include_path={include_path}" if include_path else ""
            raise CapgapError(f"eval.tasks: {name} is not an lm-evaluation-harness task{where} "
                              "(lm_eval ls tasks lists them)")
    return manager


def check(tasks: list[str], include_path: str | None = None):
    """The TaskManager for `tasks`, after checking that lm-eval is there, that it knows every
    task and that each task's data loads: before any model is loaded or trained, so a mistake
    costs seconds and writes nothing."""
    manager = task_manager(tasks, include_path)
    check_data(tasks, manager)
    return manager


def check_data(tasks: list[str], manager) -> None:
    """Build each task once, so a task whose data cannot be loaded (offline, a missing file) is
    named before any model runs; lm-eval would fail somewhere inside its evaluation."""
    for name in tasks:
        if (id(manager), name) in _loaded:
            continue
        try:
            manager.load([name])
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, …)
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise CapgapError(f"eval.tasks: the data of task {name} cannot be loaded ({first}); "
                              "offline, only tasks whose data is local or already in the datasets "
                              "cache run") from None
        _loaded.add((id(manager), name))


def figures(results: dict) -> dict[str, float]:
    """lm-eval's results as flat `harness/<task>/<metric>` floats (its filter name appended
    when it is not `none`), with `harness/higher_is_better` as {figure: bool}."""
    out, direction = {}, {}
    for task, values in results.get("results", {}).items():
        higher = results.get("higher_is_better", {}).get(task, {})
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # alias, sample counts and other non-figures
            name = f"{PREFIX}{task}/{metric}" + ("" if filt == "none" else f"/{filt}")
            if math.isfinite(value):
                out[name] = float(value)
            if metric in higher:
                direction[name] = bool(higher[metric])
    return {**out, HIGHER_IS_BETTER: direction}


def run_harness(model, tokenizer, tasks: list[str], include_path: str | None = None,
                num_fewshot: int | None = None, limit: int | float | None = None,
                batch_size: int = 8, seed: int = 0) -> dict:
    """lm-eval's simple_evaluate on `model`; see `figures` for what comes back."""
    tasks = list(tasks)
    manager = check(tasks, include_path)
    lm_eval, HFLM, _ = _lm_eval()
    was_training = model.training
    announce("benchmarks", f"lm-evaluation-harness: {', '.join(tasks)}"
                           f"{f' (first {limit} items each)' if limit else ''}")
    try:
        lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                                          num_fewshot=num_fewshot, limit=limit, log_samples=False,
                                          random_seed=seed, numpy_random_seed=seed,
                                          torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        model.train(was_training)
    return figures(results)


def scalars(figs: dict) -> dict[str, float]:
    """The figures without the direction map: what TensorBoard and a table take."""
    return {k: v for k, v in figs.items() if isinstance(v, float)}


def summary(figs: dict) -> str:
    """'; harness task/acc 0.312, …' for a report line ('' when there are none)."""
    shown = [f"{k[len(PREFIX):]} {v:.3f}" for k, v in scalars(figs).items() if not k.endswith("_stderr")]
    return f"; harness {', '.join(shown)}" if shown else ""

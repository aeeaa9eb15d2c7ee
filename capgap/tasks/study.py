"""task=study (the default): one point of the capacity-gap grid. Prune the teacher to the
student size, distill, evaluate, and write the result into the law store.

Each row is filed under `study=` (its config hash leaves the name out). A point the store
already has in this study is skipped (store.force=true re-runs it); a point whose student is
not smaller than its teacher is recorded as skipped with its reason.
"""

from __future__ import annotations

import time

from omegaconf import OmegaConf

from capgap.eval import harness
from capgap.law import store as law_store
from capgap.tasks.store_callback import StoreCallback, git_commit
from capgap.law.studies import DEFAULT, check_name, config_hash
from capgap.models import teacher_name
from capgap.runtime.errors import CapgapError
from capgap.runtime.sizes import parse_size
from capgap.runtime.terminal import report
from capgap.tasks import distill
from capgap.tasks.evaluate import check_benchmarks


def flat_hparams(cfg) -> dict:
    """The knobs a sweep varies, flattened for TensorBoard's HParams view."""
    out = {"teacher": teacher_name(cfg.teacher), "student.size": str(cfg.student.get("size")),
           "student.init": cfg.student.init, "seed": cfg.seed}
    for group in ("prune", "distill"):
        for k, v in OmegaConf.to_container(cfg[group], resolve=True).items():
            if isinstance(v, (int, float, str, bool)):
                out[f"{group}.{k}"] = v
            elif isinstance(v, dict):
                out.update({f"{group}.{k}.{kk}": vv for kk, vv in v.items()
                            if isinstance(vv, (int, float, str, bool))})
    return out


def _target(cfg) -> int | None:
    size = cfg.student.get("size")
    if size in (None, ""):
        return None
    try:
        return parse_size(size)
    except CapgapError as e:
        raise CapgapError(f"student.size={size}: {e}") from None


def run(cfg, run_dir) -> dict:
    start = time.perf_counter()
    # what can be checked before the store is opened is: a bad point leaves no trace there
    study = check_name(cfg.get("study") or DEFAULT)
    target = _target(cfg)
    check_benchmarks(cfg)
    store = law_store.from_config(cfg.store)
    h = config_hash(cfg)
    point = f"study={study} teacher={teacher_name(cfg.teacher)} student.size={cfg.student.get('size')}"
    if not cfg.store.force and store.has_done(h, study):
        row = next(r for r in store.results("done", study) if r["config_hash"] == h)
        report(f"{point}: already in store {store.name} (held-out loss {row['metric']:.4f}); "
              "skipped (store.force=true re-runs it)")
        return {"status": "cached", "config_hash": h, "val_loss": row["metric"], "objective": row["metric"]}
    size = cfg.student.get("size")
    if target is not None and target >= cfg.teacher.params:
        reason = (f"student.size={size} is not below teacher={teacher_name(cfg.teacher)} "
                  f"({cfg.teacher.params:,} parameters)")
        store.record({"study": study, "config_hash": h, "status": "skipped", "error": reason,
                      "teacher": teacher_name(cfg.teacher), "teacher_params": cfg.teacher.params, "seed": cfg.seed})
        report(f"{point}: skipped: {reason}")
        return {"status": "skipped", "reason": reason, "config_hash": h, "objective": None}

    made = []  # the store callback, so the benchmarks measured after training reach its row

    def store_callback(info, tokens_per_step):
        row = {"study": study, "config_hash": h, "teacher": teacher_name(cfg.teacher), "teacher_params": info["teacher_params"],
               "teacher_non_embedding": info["teacher_non_embedding"],
               "student_params": info["student_params"], "student_non_embedding": info["student_non_embedding"],
               "sparsity": info["sparsity"], "seed": cfg.seed,
               "config": OmegaConf.to_container(cfg, resolve=True), "git_commit": git_commit()}
        made.append(StoreCallback(store, row, flat_hparams(cfg), tokens_per_step, replace=cfg.store.force))
        return made[-1]

    metrics = distill.run(cfg, run_dir, callbacks=[store_callback])
    figs = {k: v for k, v in metrics.items() if k.startswith(harness.PREFIX)}
    if figs and made:
        made[-1].amend(figs)
    metrics.update(status="done", config_hash=h, study_wall_time_s=time.perf_counter() - start)
    return metrics

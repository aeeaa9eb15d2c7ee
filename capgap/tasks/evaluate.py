"""task=evaluate: held-out loss and perplexity of the teacher (or teacher.path=DIR) on data=;
with eval=harness, lm-evaluation-harness benchmarks too (also at the end of distill/study)."""

import time
from pathlib import Path

from capgap.data.datamodule import CorpusDataModule
from capgap.eval import harness
from capgap.models import teacher_name
from capgap.models.params import count_params
from capgap.models.zoo import load_local_tokenizer, load_tokenizer
from capgap.pretrain.lm_module import evaluate
from capgap.pretrain.teachers import load_teacher
from capgap.prune.slicing import PLAN_FILE, load_pruned
from capgap.runtime.distributed import is_rank_zero
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import announce, report
from capgap.runtime.training import is_fsdp, make_logger


def eval_data(cfg, tokenizer) -> CorpusDataModule:
    e = cfg.eval
    dm = CorpusDataModule(tokenizer, cfg.data, cfg.paths.cache_dir, batch_size=e.batch_size,
                          block_size=e.block_size, seed=cfg.seed, eval_batches=e.max_batches,
                          block_key="eval.block_size")
    dm.setup()
    return dm


def harness_settings(cfg) -> dict | None:
    """eval=harness's settings as run_harness takes them; None when no benchmark is asked for."""
    e = cfg.eval
    if e.get("tasks") is None:
        return None
    return {"tasks": list(e.tasks), "include_path": e.get("include_path"), "num_fewshot": e.get("num_fewshot"),
            "limit": e.get("limit"), "batch_size": e.get("harness_batch_size", 8), "seed": cfg.seed}


def check_benchmarks(cfg) -> None:
    """A bad eval.tasks fails here, before a teacher is loaded or a student trained."""
    s = harness_settings(cfg)
    if s is not None:
        if is_fsdp(cfg.trainer):  # the harness runs on rank 0 alone, which a sharded student cannot
            raise CapgapError("eval=harness runs on the whole student and trainer=fsdp leaves it in shards: "
                              "distill first, then `python run.py task=evaluate eval=harness "
                              "teacher.path=<run dir>/student`")
        harness.check(s["tasks"], s["include_path"])


def benchmarks(cfg, model, tokenizer, logger=None, step: int = 0) -> dict:
    """eval=harness on `model` (global rank 0 only: it owns the figures); its figures also go
    to `logger` (TensorBoard, CSV) at `step`. {} when no benchmark is asked for."""
    s = harness_settings(cfg)
    if s is None or not is_rank_zero():
        return {}
    figs = harness.run_harness(model, tokenizer, **s)
    if logger is not None:
        logger.log_metrics(harness.scalars(figs), step=step)
        logger.save()
    return figs


def load_evaluated(cfg):
    """(model, tokenizer): the teacher, or the capgap student folder at teacher.path (any
    student, uniform or not, through load_pruned)."""
    path = cfg.teacher.get("path")
    if path and (Path(path) / PLAN_FILE).is_file():
        return load_pruned(path), load_local_tokenizer(path)
    return load_teacher(cfg.teacher, cfg.pretrain, cfg.trainer, cfg.paths.cache_dir, cfg.get("logger"))


def run(cfg, run_dir) -> dict:
    start = time.perf_counter()
    check_benchmarks(cfg)
    dm = eval_data(cfg, load_tokenizer(cfg.teacher, cfg.paths.cache_dir))
    model, tokenizer = load_evaluated(cfg)
    announce("evaluating", f"{teacher_name(cfg.teacher)} on the held-out split")
    res = evaluate(model, dm, cfg.trainer)
    logger = make_logger(cfg.logger, run_dir) if cfg.get("logger") and is_rank_zero() else None
    figs = benchmarks(cfg, model, tokenizer, logger)
    if logger is not None:
        logger.finalize("success")
    n = count_params(model)
    metrics = {"teacher": teacher_name(cfg.teacher), "params": n["total"], "non_embedding": n["non_embedding"],
               **res, **figs, "wall_time_s": time.perf_counter() - start, "objective": res["val_loss"]}
    report(f"{teacher_name(cfg.teacher)} ({n['total']:,} parameters): held-out loss "
          f"{metrics['val_loss']:.4f}, ppl {metrics['val_ppl']:.2f}{harness.summary(figs)}")
    return metrics

"""task=pretrain: make (or reuse) a micro teacher and report its held-out loss."""

import time

from capgap.pretrain.teachers import pretrained_micro
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import report


def run(cfg, run_dir) -> dict:
    t = cfg.teacher
    if t.get("source") != "micro" or t.get("path"):
        raise CapgapError(f"task=pretrain makes the offline micro family; teacher={t.name} comes "
                          "pretrained (use it in task=prune, distill or study)")
    start = time.perf_counter()
    made = pretrained_micro(t, cfg.pretrain, cfg.trainer, cfg.paths.cache_dir, cfg.get("logger"), run_dir=run_dir)
    m, cached = made.metrics, not made.built
    metrics = {"teacher": t.name, "val_loss": m["val/loss"], "val_ppl": m["val/ppl"],
               "unigram_entropy": m["unigram_entropy"], "tokens": m["tokens"], "cached": cached,
               "teacher_dir": str(made.folder), "wall_time_s": time.perf_counter() - start,
               "objective": m["val/loss"]}
    how = "reused cache" if cached else f"pretrained on {m['tokens']:,} tokens"
    report(f"{t.name}: held-out loss {metrics['val_loss']:.4f} nats/token "
          f"(ppl {metrics['val_ppl']:.1f}; unigram entropy of validation {metrics['unigram_entropy']:.4f}) "
          f"{how} in "
          f"{metrics['wall_time_s']:.1f}s -> {metrics['teacher_dir']}")
    return metrics

"""task=evaluate: held-out loss and perplexity of the teacher (or teacher.path=DIR) on data=."""

import time

from capgap.data.datamodule import CorpusDataModule
from capgap.models import teacher_name
from capgap.models.params import count_params
from capgap.models.zoo import load_tokenizer
from capgap.pretraining import load_teacher
from capgap.terminal import announce, report
from capgap.training import evaluate


def eval_data(cfg, tokenizer) -> CorpusDataModule:
    e = cfg.eval
    dm = CorpusDataModule(tokenizer, cfg.data, cfg.paths.cache_dir, batch_size=e.batch_size,
                          block_size=e.block_size, seed=cfg.seed, eval_batches=e.max_batches,
                          block_key="eval.block_size")
    dm.setup()
    return dm


def run(cfg, run_dir) -> dict:
    start = time.perf_counter()
    dm = eval_data(cfg, load_tokenizer(cfg.teacher, cfg))
    model, _ = load_teacher(cfg.teacher, cfg)
    announce("evaluating", f"{teacher_name(cfg.teacher)} on the held-out split")
    res = evaluate(model, dm, cfg.trainer)
    n = count_params(model)
    metrics = {"teacher": teacher_name(cfg.teacher), "params": n["total"], "non_embedding": n["non_embedding"],
               **res, "wall_time_s": time.perf_counter() - start, "objective": res["val_loss"]}
    report(f"{teacher_name(cfg.teacher)} ({n['total']:,} parameters): held-out loss "
          f"{metrics['val_loss']:.4f}, ppl {metrics['val_ppl']:.2f}")
    return metrics

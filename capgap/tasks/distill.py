"""task=distill: teacher → student (pruned, scratch or a checkpoint) → distill on distill.tokens
→ held-out metrics and the student, saved in the run dir.

Checkpoints live under the cache, keyed by a hash of the config (not the run dir), so running
the same command again after an interruption resumes from its last checkpoint.
"""

import json
import shutil
import time
from pathlib import Path

from capgap.data.datamodule import CorpusDataModule
from capgap.data.transfer import apply_strategy
from capgap.distill.chain import planned_sizes, run_chain
from capgap.distill.config import from_config
from capgap.distill.finetune import finetune, finetune_settings
from capgap.eval import harness
from capgap.law.studies import config_hash
from capgap.models import teacher_name
from capgap.models.zoo import load_tokenizer
from capgap.pretrain.teachers import load_teacher
from capgap.prune.plan import Plan
from capgap.prune.slicing import PLAN_FILE
from capgap.prune.student import Scoring, make_student, size_info
from capgap.runtime import distributed, sharding, training
from capgap.runtime.budget import token_budget
from capgap.runtime.resume import claim
from capgap.runtime.sizes import parse_size
from capgap.runtime.terminal import announce, report
from capgap.tasks.evaluate import benchmarks, check_benchmarks
from capgap.tasks.prune import save_student, student_card


def checkpoint_dir(cfg) -> Path:
    return Path(cfg.paths.cache_dir) / "checkpoints" / f"distill-{config_hash(cfg)}"


def student_plan(cfg, info):
    """The pruning plan to save the student with: the one just made, or the one saved beside a
    student.path checkpoint (a non-uniform student cannot be saved as a stock HF folder)."""
    if info.get("plan") is not None:
        return info["plan"]
    if cfg.student.init == "path":
        f = Path(cfg.student.path) / PLAN_FILE
        if f.is_file():
            return Plan.from_dict(json.loads(f.read_text())["plan"])
    return None


def run(cfg, run_dir, callbacks=()) -> dict:
    """`callbacks`: factories `f(info, tokens_per_step) -> lightning Callback`, called once the
    student exists (task=study adds the one that writes the store). Reached through run_task
    only, which has set the accumulation for distill.global_batch_tokens."""
    check_benchmarks(cfg)  # a bad eval.tasks fails before a checkpoint folder is claimed
    # one job per checkpoint folder, for the whole run; rank 0 holds it for the job's ranks
    with claim(checkpoint_dir(cfg), owner=distributed.current().is_zero) as ckpt_dir:
        return _run(cfg, run_dir, ckpt_dir, callbacks)


def _run(cfg, run_dir, ckpt_dir: Path, callbacks) -> dict:
    start = time.perf_counter()
    d = cfg.distill
    # before the student exists its size is the target's (None when sized by sparsity); the
    # budget trained is the real student's. A budget with neither key set fails here, first.
    size = cfg.student.get("size")
    planned_tokens = token_budget(d, parse_size(size) if size not in (None, "") else None)
    # tokenize first: a bad corpus fails before a teacher is loaded or pretrained
    dm = CorpusDataModule(load_tokenizer(cfg.teacher, cfg.paths.cache_dir), cfg.data, cfg.paths.cache_dir,
                          batch_size=d.batch_size, block_size=d.block_size, seed=cfg.seed,
                          eval_batches=d.eval_batches)
    dm.setup()
    teacher, tokenizer = load_teacher(cfg.teacher, cfg.pretrain, cfg.trainer, cfg.paths.cache_dir, cfg.get("logger"))
    # every teacher pass (selection, generation, scoring, layer influence, training, evaluation)
    # runs on this process's training device, in the training precision
    device = training.device_for(cfg.trainer)
    teacher.to(device)
    precision = training.autocast_for(cfg.trainer, device)
    how = Scoring.of(cfg, tokenizer)
    # the transfer set (generated or teacher-selected blocks) is fixed before any stage trains
    with precision:
        transfer = apply_strategy(d, dm, teacher, how.key, seed=cfg.seed, cache_dir=cfg.paths.cache_dir,
                                  tokens=planned_tokens)
    job = distributed.current()
    resumed = job.broadcast(training.has_checkpoint(ckpt_dir / "last.ckpt"))
    log_every = cfg.trainer.get("log_every_n_steps", 10)
    # a teacher-assistant chain distills its assistants first; the last one teaches the student
    source, source_how, chain = teacher, how, []
    sizes = job.broadcast(planned_sizes(cfg, teacher, how) if job.is_zero else None)  # it may read the store
    if sizes:
        source, source_how, chain = run_chain(cfg, teacher, tokenizer, dm, run_dir, ckpt_dir, sizes, how, log_every)
    with precision:
        student, info = make_student(cfg.student, cfg.prune, source, tokenizer, source_how)
    plan = student_plan(cfg, info)
    info.pop("plan", None)
    if chain:  # make_student measured against the last assistant; the store wants the real teacher
        info.update(size_info(student, teacher))
    tokens = token_budget(d, info["student_params"])
    per_step = training.tokens_per_step(cfg.trainer, dm.tokens_per_batch)
    steps = training.steps_for(tokens, dm.tokens_per_batch, cfg.trainer)
    announce("distilling", f"{info['student_params']:,}-parameter student from {teacher_name(cfg.teacher)} "
                           f"({d.loss.name}, alpha {d.loss.alpha}) on {steps * per_step:,} tokens; "
                           f"resumable checkpoints in {ckpt_dir}{' (resuming)' if resumed else ''}")
    module = from_config(student, source, d, steps, log_every=log_every)
    # DDP ranks > 0 run this same job: only rank 0 writes the store
    extra = [make(info, per_step) for make in callbacks] if job.is_zero else []
    ft_tokens, ft_scale = finetune_settings(d)
    # the callbacks (the study's store row) see the last stage: the student that is saved
    trainer, res = training.fit(module, dm, cfg.trainer, cfg.get("logger"), run_dir, ckpt_dir, steps,
                                extra_callbacks=() if ft_tokens else extra, find_unused=module.sits_out)
    before = res
    if ft_tokens:
        ft_trainer, res = finetune(module.model, dm, d, cfg.trainer, cfg.get("logger"), run_dir, ckpt_dir,
                                   ft_tokens, ft_scale, log_every=log_every,
                                   extra_callbacks=extra)
    folder = run_dir / "student"
    # trainer=fsdp: the student's shards gathered whole on rank 0 (every rank takes part)
    whole = sharding.full_state_dict(module.model)
    last = ft_trainer if ft_tokens else trainer
    # eval=harness: benchmarks of the final student, before it is saved, so its card has them
    figs = benchmarks(cfg, module.model, tokenizer, last.logger, int(last.global_step))
    metrics = {"teacher": teacher_name(cfg.teacher), "student_init": cfg.student.init, **info, **transfer,
               "loss": d.loss.name, "alpha": float(d.loss.alpha),
               "steps": int(trainer.global_step), "tokens": int(trainer.global_step) * per_step,
               "tokens_planned": tokens, "tokens_per_step": per_step,
               "resumed": resumed, "val_loss": res["val/loss"], "val_ppl": res["val/ppl"],
               "teacher_val_loss": before.get("val/teacher_loss"), "student_dir": str(folder),
               **figs, "wall_time_s": time.perf_counter() - start, "objective": res["val/loss"]}
    if chain:
        # teacher_val_loss above is the last assistant's; the real teacher's is the first stage's
        metrics.update(chain=chain, teacher_val_loss=chain[0]["teacher_val_loss"],
                       assistant_val_loss=before.get("val/teacher_loss"))
    if ft_tokens:
        # val_loss is the final student's; the distilled one's stays beside it for the ablation
        metrics.update(val_loss_distilled=before["val/loss"], finetune_steps=int(ft_trainer.global_step),
                       finetune_tokens=int(ft_trainer.global_step) * per_step,
                       finetune_lr=float(d.lr * ft_scale))
    if job.is_zero:
        save_student(module.model, plan, tokenizer, folder, student_card(cfg, module.model, plan, metrics),
                     state_dict=whole)
        if not d.get("keep_checkpoint"):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        report(f"distilled {info['student_params']:,}-parameter student from {teacher_name(cfg.teacher)} "
               f"({d.loss.name}, alpha {d.loss.alpha}) on {metrics['tokens']:,} tokens"
               f"{' (resumed)' if resumed else ''}: held-out loss {metrics['val_loss']:.4f} "
               f"(teacher {metrics['teacher_val_loss']:.4f}){harness.summary(figs)}; saved {folder}")
    return metrics

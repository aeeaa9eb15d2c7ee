"""task=prune: teacher → scores → plan → sliced student saved in the run dir, with a summary."""

import time

from capgap.eval import harness
from capgap.law.studies import config_hash
from capgap.models import teacher_name
from capgap.models.adapters import adapter_for
from capgap.models.card import Card, model_card
from capgap.models.remote_code import layer_widths
from capgap.models.zoo import load_tokenizer
from capgap.pretrain.lm_module import evaluate
from capgap.pretrain.teachers import load_teacher
from capgap.prune.slicing import is_uniform, save_pruned
from capgap.prune.student import Scoring, make_student
from capgap.prune.summary import summary
from capgap.runtime import distributed
from capgap.runtime.atomic import atomic_dir
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import announce, report
from capgap.runtime.training import make_logger
from capgap.tasks.evaluate import eval_data


def save_student(student, plan, tokenizer, folder, card: str | None = None, state_dict=None):
    """HF folder + tokenizer (+ capgap_plan.json, + the model card README.md), all appearing
    at once or not at all. `state_dict`: the student's whole weights when the model holds
    shards (trainer=fsdp)."""
    with atomic_dir(folder) as tmp:
        if plan is not None:
            save_pruned(student, plan, tmp, state_dict=state_dict)
        else:
            student.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
    return folder


def student_card(cfg, student, plan, metrics: dict) -> str:
    """The model card of `student`, from the run's metrics (capgap.models.card)."""
    uniform = plan is None or is_uniform(plan, adapter_for(student))
    return model_card(Card(
        teacher=cfg.teacher.name, teacher_params=metrics["teacher_params"],
        student_params=metrics["student_params"], hidden=student.config.hidden_size,
        widths=layer_widths(student), uniform=uniform, config_hash=config_hash(cfg),
        teacher_layers=plan.layers if plan is not None else None, sparsity=metrics.get("sparsity"),
        loss=metrics.get("loss"), alpha=metrics.get("alpha"), tokens=metrics.get("tokens"),
        val_loss=metrics.get("val_loss"), teacher_val_loss=metrics.get("teacher_val_loss"),
        harness={k: v for k, v in metrics.items() if k.startswith(harness.PREFIX)},
        base_model=cfg.teacher.get("hub_id")))


def run(cfg, run_dir) -> dict:
    if cfg.student.init != "pruned":
        raise CapgapError(f"task=prune makes pruned students; student.init={cfg.student.init} (use student=pruned)")
    start = time.perf_counter()
    dm = eval_data(cfg, load_tokenizer(cfg.teacher, cfg.paths.cache_dir))
    teacher, tokenizer = load_teacher(cfg.teacher, cfg.pretrain, cfg.trainer, cfg.paths.cache_dir, cfg.get("logger"))
    student, info = make_student(cfg.student, cfg.prune, teacher, tokenizer, Scoring.of(cfg, tokenizer))
    plan = info.pop("plan")
    table, scalars = summary(teacher, student, plan)
    announce("evaluating", "teacher and student on the held-out split")
    teacher_eval = evaluate(teacher, dm, cfg.trainer)
    student_eval = evaluate(student, dm, cfg.trainer)
    if not distributed.current().is_zero:  # the other ranks scored and evaluated; rank 0 writes
        return {"student_dir": str(run_dir / "student"), "objective": student_eval["val_loss"]}
    (run_dir / "prune_summary.txt").write_text(table + "\n")
    if cfg.get("logger"):  # logger=csv, tensorboard, …: the figures go where the user asked
        logger = make_logger(cfg.logger, run_dir)
        logger.log_metrics({**{f"prune/{k}": float(v) for k, v in scalars.items()},
                            "prune/val_loss/teacher": teacher_eval["val_loss"],
                            "prune/val_loss/student": student_eval["val_loss"]}, step=0)
        logger.finalize("success")
    metrics = {"teacher": teacher_name(cfg.teacher), **info, "method": cfg.prune.method,
               "teacher_val_loss": teacher_eval["val_loss"], "val_loss": student_eval["val_loss"],
               "val_ppl": student_eval["val_ppl"], "student_dir": str(run_dir / "student"),
               "wall_time_s": time.perf_counter() - start, "objective": student_eval["val_loss"]}
    folder = save_student(student, plan, tokenizer, run_dir / "student", student_card(cfg, student, plan, metrics))
    report(table)
    report(f"{teacher_name(cfg.teacher)} -> {info['student_params']:,} parameters "
          f"(sparsity {info['sparsity']:.1%}, {cfg.prune.method}): held-out loss "
          f"{teacher_eval['val_loss']:.4f} -> {student_eval['val_loss']:.4f} before distillation; "
          f"saved {folder}")
    return metrics

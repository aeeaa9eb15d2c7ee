"""task=prune: teacher → scores → plan → sliced student saved in the run dir, with a summary."""

import time

from hydra.utils import instantiate

from capgap import distributed
from capgap.errors import CapgapError
from capgap.models import teacher_name
from capgap.models.zoo import load_tokenizer
from capgap.pretraining import load_teacher
from capgap.atomic import atomic_dir
from capgap.prune.slicing import save_pruned
from capgap.prune.summary import summary
from capgap.student import make_student
from capgap.tasks.evaluate import eval_data
from capgap.terminal import announce, report
from capgap.training import evaluate


def save_student(student, plan, tokenizer, folder):
    """HF folder + tokenizer (+ capgap_plan.json), all appearing at once or not at all."""
    with atomic_dir(folder) as tmp:
        if plan is not None:
            save_pruned(student, plan, tmp)
        else:
            student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def run(cfg, run_dir) -> dict:
    if cfg.student.init != "pruned":
        raise CapgapError(f"task=prune makes pruned students; student.init={cfg.student.init} (use student=pruned)")
    start = time.perf_counter()
    dm = eval_data(cfg, load_tokenizer(cfg.teacher, cfg))
    teacher, tokenizer = load_teacher(cfg.teacher, cfg)
    student, info = make_student(cfg, teacher, tokenizer)
    plan = info.pop("plan")
    table, scalars = summary(teacher, student, plan)
    announce("evaluating", "teacher and student on the held-out split")
    teacher_eval = evaluate(teacher, dm, cfg.trainer)
    student_eval = evaluate(student, dm, cfg.trainer)
    folder = run_dir / "student"
    if not distributed.current().is_zero:  # the other ranks scored and evaluated; rank 0 writes
        return {"student_dir": str(folder), "objective": student_eval["val_loss"]}
    save_student(student, plan, tokenizer, folder)
    (run_dir / "prune_summary.txt").write_text(table + "\n")
    if cfg.get("logger"):  # logger=csv, tensorboard, …: the figures go where the user asked
        logger = instantiate(cfg.logger, save_dir=str(run_dir))
        logger.log_metrics({**{f"prune/{k}": float(v) for k, v in scalars.items()},
                            "prune/val_loss/teacher": teacher_eval["val_loss"],
                            "prune/val_loss/student": student_eval["val_loss"]}, step=0)
        logger.finalize("success")
    metrics = {"teacher": teacher_name(cfg.teacher), **info, "method": cfg.prune.method,
               "teacher_val_loss": teacher_eval["val_loss"], "val_loss": student_eval["val_loss"],
               "val_ppl": student_eval["val_ppl"], "student_dir": str(folder),
               "wall_time_s": time.perf_counter() - start, "objective": student_eval["val_loss"]}
    report(table)
    report(f"{teacher_name(cfg.teacher)} -> {info['student_params']:,} parameters "
          f"(sparsity {info['sparsity']:.1%}, {cfg.prune.method}): held-out loss "
          f"{teacher_eval['val_loss']:.4f} -> {student_eval['val_loss']:.4f} before distillation; "
          f"saved {folder}")
    return metrics

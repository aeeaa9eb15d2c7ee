"""student=scratch student.arch=llama: a LLaMA-style student of a GPT-NeoX teacher sharing its
tokenizer, distilled through task=distill and saved as a stock HF folder."""

from test_distill_task import config, tiny_setup  # noqa: F401  (fixture)
from transformers import AutoModelForCausalLM

from capgap.tasks import run_task


def test_llama_student_of_a_gpt_neox_teacher(tiny_setup, tmp_path):
    root, corpus = tiny_setup
    cfg = config(root, corpus, tmp_path / "run", "student=scratch", "student.arch=llama", "student.size=20K",
                 "distill.tokens=256")
    m = run_task(cfg)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student")
    assert student.config.model_type == "llama"
    assert sum(p.numel() for p in student.parameters()) == m["student_params"] < m["teacher_params"]
    assert m["val_loss"] > 0 and m["teacher_val_loss"] > 0 and m["steps"] == 4

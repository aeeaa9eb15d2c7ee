"""trainer=fsdp on CPU: 2 gloo processes through the normal entry (`python run.py task=distill
trainer=fsdp trainer.accelerator=cpu trainer.devices=2`), torch's FSDP2 under Lightning's
ModelParallelStrategy, in the config's bf16-mixed. The student and the teacher train sharded
(KD and hidden-state matching through learned projections), gradients are clipped,
the final validation runs on the student the fit sharded, the student is saved whole and
loads, and a job killed after a checkpoint resumes to the figures of an uninterrupted one.
What each rank saw comes from callbacks injected from the config (tests/ddp_scripts/fsdp_probe.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_ddp import setup  # noqa: F401  (a local corpus and a tiny GPT-NeoX teacher saved with its BPE)

from capgap.data.rank_share import EvenBatches

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "ddp_scripts"
TOKENS, BATCH, BLOCK = 1024, 2, 16
STEPS = TOKENS // (BATCH * BLOCK * 2)  # 16 optimizer steps over 2 processes


def distill(root, work: Path, callbacks=(), teacher=None,
            student=("student=pruned", "prune=magnitude", "prune.sparsity=0.5")):
    """`python run.py task=distill trainer=fsdp` on 2 CPU processes, run dir work/run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(SCRIPTS)]), OMP_NUM_THREADS="1")
    cbs = "[" + ",".join(callbacks) + "]"
    args = ["task=distill", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
            f"+trainer.callbacks={cbs}", "trainer.checkpoint_every=4", "trainer.log_every_n_steps=1",
            f"teacher.path={teacher or root / 'teacher'}", "data=local", f"data.path={root / 'corpus.jsonl'}",
            "data.val_fraction=0.2", *student,
            # KD and hidden-state matching, through projections: the teacher's hidden states too
            "distill=hidden",
            f"distill.batch_size={BATCH}", f"distill.block_size={BLOCK}", "distill.eval_batches=2",
            f"distill.tokens={TOKENS}", "trainer.enable_progress_bar=false", "logger=csv",
            f"paths.run_dir={work / 'run'}", f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'h'}"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def probe(out: Path) -> str:
    return f"{{_target_:fsdp_probe.Probe,out:'{out}'}}"


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    work = tmp_path_factory.mktemp("fsdp_run")
    p = distill(setup, work, callbacks=[probe(work / "probe")])
    assert p.returncode == 0, p.stderr[-4000:]
    return work


@pytest.mark.slow  # 54 s of two processes on a quiet 2-core machine, 87 s on a busy one
def test_sharded_teacher_and_student_train_clip_validate_and_save_whole(setup, uninterrupted):
    work = uninterrupted
    m = json.loads((work / "run" / "metrics.json").read_text())
    assert m["steps"] == STEPS and m["tokens"] == TOKENS and not m["resumed"]
    ranks = [json.loads((work / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        (fit, at_fit), (final, at_final) = seen["stages"]
        assert (fit, final) == ("fit", "validate")
        for layout in (at_fit, at_final):
            assert layout["strategy"] == "ModelParallelStrategy" and layout["world"] == 2
            # the student: one unit per decoder layer (2) and the root, every parameter a shard
            assert layout["student_fsdp_root"] and layout["student_fsdp_units"] == 3
            assert layout["student_all_dtensor"]
            assert layout["student_numel"] == m["student_params"]
            assert layout["student_local_numel"] < 0.6 * m["student_params"]
            # the projections of the hidden-state term: sharded too, so their gradients are reduced
            assert layout["terms_numel"] > 0 and layout["terms_all_dtensor"]
            # the teacher: its 2 layers sharded, the LM head whole
            assert layout["teacher_fsdp_units"] == 2 and layout["teacher_layers_dtensor"]
            assert layout["teacher_head_whole"]
        # the final validation found the fit's units: sharding twice would have made more (or failed)
        assert at_final == at_fit
        # clipping at trainer.gradient_clip_val 1.0, on DTensor gradients: some steps needed it
        pre, post = seen["pre_clip"], seen["post_clip"]
        assert len(pre) == len(post) == STEPS
        assert max(pre) > 1.0
        assert all(b <= 1.0 + 1e-4 and b <= a + 1e-6 for a, b in zip(pre, post))
    # the ranks saw the same gathered norms: one model, not two
    assert ranks[0]["pre_clip"] == pytest.approx(ranks[1]["pre_clip"], rel=1e-6)
    # the logged grad norm (capgap.pretrain.lm_module, a DTensor norm) is the probe's
    import csv
    rows = list(csv.DictReader((work / "run" / "csv" / "metrics.csv").open()))
    logged = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert logged == pytest.approx(ranks[0]["pre_clip"], rel=1e-5)

    # the student, saved whole by rank 0, loads and gives the held-out loss the job reported
    from transformers import AutoTokenizer

    from capgap.data.datamodule import CorpusDataModule
    from capgap.models.lm_loss import lm_loss
    from capgap.prune.slicing import load_pruned

    student = load_pruned(work / "run" / "student").eval()
    assert sum(p.numel() for p in student.parameters()) == m["student_params"]
    tok = AutoTokenizer.from_pretrained(work / "run" / "student")
    data = OmegaConf.create({"kind": "local", "path": str(setup / "corpus.jsonl"), "text_key": "text",
                             "val_fraction": 0.2, "max_tokens": None})
    dm = CorpusDataModule(tok, data, work / "cache", batch_size=BATCH, block_size=BLOCK)
    dm.setup()
    total = count = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the job's bf16-mixed
        for batch in dm.val_dataloader():
            logits = student(input_ids=batch["input_ids"]).logits
            assert torch.isfinite(logits).all()
            loss, n = lm_loss(student, batch["input_ids"], batch["labels"])
            total, count = total + float(loss) * int(n), count + int(n)
    assert total / count == pytest.approx(m["val_loss"], rel=2e-3)


@pytest.mark.slow
def test_a_sharded_job_killed_after_a_checkpoint_resumes_to_the_uninterrupted_figures(
        setup, uninterrupted, tmp_path):
    flag = tmp_path / "stop"
    flag.touch()
    # the same config twice (the callbacks are in its hash, hence its checkpoint folder's name)
    cbs = [probe(tmp_path / "probe"), f"{{_target_:fsdp_probe.StopOnce,at_step:6,flag:'{flag}'}}"]
    killed = distill(setup, tmp_path, callbacks=cbs)
    assert killed.returncode != 0
    last = next((tmp_path / "cache" / "checkpoints").glob("distill-*/last.ckpt"))
    assert last.is_dir() and (last / "meta.pt").is_file()  # a distributed checkpoint: a folder
    assert not (tmp_path / "run" / "metrics.json").exists()
    flag.unlink()
    p = distill(setup, tmp_path, callbacks=cbs)
    assert p.returncode == 0, p.stderr[-4000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ref = json.loads((uninterrupted / "run" / "metrics.json").read_text())
    assert m["resumed"] and m["steps"] == ref["steps"] == STEPS
    assert m["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6)
    # the resumed fit ran steps 4..15 only: its last checkpoint was at step 4
    assert len(json.loads((tmp_path / "probe" / "rank0.json").read_text())["pre_clip"]) == STEPS - 4
    assert not last.exists()  # a finished run deletes its checkpoints
    assert (tmp_path / "run" / "student" / "config.json").is_file()


@pytest.mark.slow
def test_a_tied_embedding_teacher_and_student_shard_and_the_student_saves_whole(setup, tmp_path):
    """LLaMA with tied embeddings (as SmolLM2): the teacher's tied head stays whole, the student's
    shares one sharded weight in its root unit and is saved as a stock HF folder (no plan)."""
    from conftest import tiny_llama
    from transformers import AutoTokenizer

    from capgap.prune.slicing import load_pruned

    tok = AutoTokenizer.from_pretrained(setup / "teacher")
    torch.manual_seed(0)
    tiny_llama(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
               bos_token_id=tok.eos_token_id).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    p = distill(setup, tmp_path, teacher=tmp_path / "llama", student=("student=scratch", "prune.sparsity=0.5"))
    assert p.returncode == 0, p.stderr[-4000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["steps"] == STEPS and m["val_loss"] < m["teacher_val_loss"]
    student = load_pruned(tmp_path / "run" / "student")
    assert type(student).__name__ == "LlamaForCausalLM" and student.config.architectures == ["LlamaForCausalLM"]
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert sum(p.numel() for p in student.parameters()) == m["student_params"]
    assert torch.isfinite(student(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_even_batches_tops_a_short_rank_up_with_blank_batches():
    data = [{"input_ids": torch.full((4,), i), "labels": torch.full((4,), i)} for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)  # 3 batches, the last one short
    batches = list(EvenBatches(loader, 4))
    assert len(EvenBatches(loader, 4)) == 4 and len(batches) == 4
    assert [b["labels"].tolist() for b in batches[:3]] == [b["labels"].tolist() for b in loader]
    assert (batches[3]["labels"] == -100).all() and batches[3]["input_ids"].shape == (1, 4)

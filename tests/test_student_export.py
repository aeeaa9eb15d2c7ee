"""Every student folder loads with stock transformers where capgap is not installed.

Non-uniform students (per-layer widths, hidden size cut on its own, dropped layers) of each
family carry a modeling file; a venv that has torch and transformers but not capgap loads
them with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True), and its logits
and greedy generation (KV cache on) must equal what capgap's load_pruned gives.
"""

from __future__ import annotations

import ast
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from prune_helpers import logits

from capgap.models.adapters import adapter_for
from capgap.models.remote_code import FAMILIES, MODELING_FILE, modeling_source
from capgap.prune.planner import make_plan
from capgap.prune.scores import random_scores
from capgap.prune.slicing import PLAN_FILE, is_uniform, load_pruned, save_pruned, slice_model

X = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
PROMPT, NEW = X[:1, :4], 12

# (family, config changes, plan): tied and untied heads, GQA, parallel and sequential
# residuals, dropped layers; every one non-uniform except the last
CASES = {
    "gpt_neox": ("gpt_neox", {}, {}),
    "gpt_neox_tied_sequential_dropped": ("gpt_neox", dict(tie_word_embeddings=True, use_parallel_residual=False,
                                                          num_hidden_layers=4), dict(layer_drop="minima", drop_layers=2)),
    "gpt2": ("gpt2", {}, {}),
    "gpt2_dropped": ("gpt2", dict(n_layer=4), dict(layer_drop="minima", drop_layers=1)),
    "llama_gqa_tied": ("llama", {}, {}),
    "llama_untied_dropped": ("llama", dict(tie_word_embeddings=False, num_hidden_layers=4),
                             dict(layer_drop="minima", drop_layers=2)),
    "llama_uniform": ("llama", {}, dict(ranking="uniform")),
}


def student(family, changes, plan_kw):
    torch.manual_seed(0)
    teacher = TINY[family](**changes)
    scores = random_scores(teacher)
    for n in scores.neurons[1:]:
        n *= 0.1  # later layers lose more neurons: the global ranking makes widths differ
    plan = make_plan(teacher, scores, sparsity=0.6, **{"ranking": "global", **plan_kw})
    return slice_model(teacher, plan), plan


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    out = {}
    for name, (family, changes, plan_kw) in CASES.items():
        model, plan = student(family, changes, plan_kw)
        out[name] = (save_pruned(model, plan, root / name), model, plan)
    return out


def venv_without_capgap(where: Path) -> Path:
    """A venv that sees this interpreter's site-packages (torch, transformers) through a .pth
    file, which does not run the .pth files there: capgap's editable install stays out."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


LOADER = """
import json, sys
import torch
try:
    import capgap
    sys.exit("capgap is importable here: " + capgap.__file__)
except ImportError:
    pass
from transformers import AutoModelForCausalLM
x, prompt, new = torch.load(sys.argv[2])
out = {}
for folder in json.loads(sys.argv[1]):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        out[folder] = (type(model).__name__, model(x).logits,
                       model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False))
    # the per-layer configs only size the modules: switching the attention reaches every layer
    model.set_attn_implementation("eager")
    seen = {m.config._attn_implementation for m in model.modules() if getattr(m, "config", None) is not None}
    assert seen == {"eager"}, (folder, seen)
torch.save(out, sys.argv[3])
"""


def test_every_family_loads_without_capgap(saved, tmp_path):
    for name, (folder, model, plan) in saved.items():
        assert is_uniform(plan, adapter_for(model)) == (name == "llama_uniform"), name
    python = venv_without_capgap(tmp_path / "venv")
    script, inputs, result = tmp_path / "load.py", tmp_path / "inputs.pt", tmp_path / "out.pt"
    script.write_text(LOADER)
    torch.save((X, PROMPT, NEW), inputs)
    folders = [str(f) for f, _, _ in saved.values()]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    p = subprocess.run([str(python), str(script), json.dumps(folders), str(inputs), str(result)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = torch.load(result)
    worst = 0.0
    for name, (folder, model, plan) in saved.items():
        cls, stock_logits, stock_gen = out[str(folder)]
        ours = load_pruned(folder)
        assert cls.startswith("Capgap") != (name == "llama_uniform"), (name, cls)
        delta = (stock_logits - logits(ours, X)).abs().max().item()
        worst = max(worst, delta)
        assert delta <= 1e-6, (name, delta)
        assert torch.equal(logits(ours, X), logits(model, X)), name  # load_pruned is the student
        with torch.no_grad():
            ours_gen = ours.generate(PROMPT, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        assert torch.equal(stock_gen, ours_gen), name
    print(f"max |logits delta| over {len(saved)} students: {worst:.3g}")


def test_config_holds_the_per_layer_widths(saved):
    folder, model, plan = saved["llama_untied_dropped"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "capgap_llama" and "AutoModelForCausalLM" in config["auto_map"]
    assert config["num_hidden_layers"] == len(plan.layers) == 2
    hpg = 6 // 2  # query heads per key/value group in the tiny LLaMA
    assert config["layer_kv_heads"] == [len(h) for h in plan.heads]
    assert config["layer_heads"] == [hpg * len(h) for h in plan.heads]
    assert config["layer_intermediate"] == [len(n) for n in plan.neurons]
    assert config["hidden_size"] == len(plan.hidden) and config["tie_word_embeddings"] is False
    assert (folder / MODELING_FILE).read_text() == modeling_source("llama")


def test_stock_loader_without_trust_remote_code_refuses(saved):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="trust_remote_code"):  # loudly, not a wrong model
        AutoModelForCausalLM.from_pretrained(saved["gpt2"][0], trust_remote_code=False)


def test_modeling_files_import_only_torch_and_transformers():
    for family in FAMILIES:
        tree = ast.parse(modeling_source(family))
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert roots <= {"copy", "torch", "transformers"}, (family, roots)


def test_folders_written_before_the_modeling_file_still_load(tmp_path):
    """Before, a non-uniform folder held the teacher's config.json, tensors under in-memory
    names and capgap_plan.json; load_pruned rebuilt it from the plan. Written here as that
    code wrote it."""
    from transformers import AutoConfig

    model, plan = student("gpt_neox", {}, {})
    folder = tmp_path / "old"
    config = model.config
    model.config = AutoConfig.for_model(**plan.teacher)
    try:
        model.save_pretrained(folder, save_original_format=False)
    finally:
        model.config = config
    (folder / PLAN_FILE).write_text(json.dumps({"uniform": False, "plan": plan.to_dict()}))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt_neox"
    assert torch.equal(logits(load_pruned(folder), X), logits(model, X))

"""Plan → a model with really smaller tensors; save it atomically; load it back.

A uniform plan (every layer the same width, and a shape the stock HF class can build)
saves a stock folder: plain AutoModelForCausalLM.from_pretrained reloads it. A non-uniform
one saves the same weights with a modeling file and its per-layer widths in config.json
(capgap.models.remote_code), so stock transformers reloads it with trust_remote_code=True;
without that flag the loader refuses the unknown model_type rather than loading something
wrong. Both carry capgap_plan.json, from which `load_pruned(dir)` rebuilds either as the
stock class capgap sliced (folders written before the modeling file load the same way).
"""

import copy
import json
from pathlib import Path

import torch

from capgap.models.adapters import adapter_for
from capgap.models.remote_code import write_remote_code
from capgap.prune.plan import Plan
from capgap.runtime.atomic import atomic_dir
from capgap.runtime.errors import CapgapError

PLAN_FILE = "capgap_plan.json"


def is_uniform(plan: Plan, adapter) -> bool:
    heads, neurons = {len(h) for h in plan.heads}, {len(n) for n in plan.neurons}
    if len(heads) > 1 or len(neurons) > 1:
        return False
    q_heads = heads.pop() * adapter.heads_per_group
    if adapter.attn_width_is_hidden:
        return q_heads * adapter.head_dim == len(plan.hidden)
    return q_heads > 0 and len(plan.hidden) % q_heads == 0  # what HF's config validators demand


def skeleton(config):
    """The teacher's architecture with parameters on the meta device: free to build, slice and count."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # init_empty_weights skips tying; slicing needs to see it
    return model


def slice_model(model, plan: Plan, inplace: bool = False):
    """The student: `model` (a copy unless inplace) cut down to what `plan` keeps."""
    student = model if inplace else copy.deepcopy(model)
    a = adapter_for(student)
    a.keep_layers(plan.layers)
    for layer, heads, neurons in zip(a.layers(), plan.heads, plan.neurons):
        a.slice_heads(layer, torch.as_tensor(heads, dtype=torch.long))
        a.slice_neurons(layer, torch.as_tensor(neurons, dtype=torch.long))
    a.slice_hidden(torch.as_tensor(plan.hidden, dtype=torch.long))
    # exact for a uniform plan; otherwise the widest layer, and the plan file is the truth
    a.set_shape(max(map(len, plan.heads)), max(map(len, plan.neurons)))
    return student


def save_pruned(student, plan: Plan, path, state_dict=None) -> Path:
    path = Path(path)
    uniform = is_uniform(plan, adapter_for(student))
    config = student.config
    with atomic_dir(path) as tmp:
        if not uniform:
            # the stock config's validators refuse some pruned shapes (hidden not divisible by
            # the heads) at save time: save under the teacher's, then write_remote_code
            # replaces config.json with the student's own, per-layer widths included
            from transformers import AutoConfig
            student.config = AutoConfig.for_model(**plan.teacher)
        try:
            # non-uniform: keep in-memory tensor names (HF's save-time renaming, e.g. NeoX's
            # lm_head -> embed_out, is undone only by its stock loader; the modeling file's
            # classes are custom code, which that renaming skips)
            student.save_pretrained(tmp, save_original_format=uniform, state_dict=state_dict)
        finally:
            student.config = config
        if not uniform:
            write_remote_code(student, tmp)
        (tmp / PLAN_FILE).write_text(json.dumps({"uniform": uniform, "plan": plan.to_dict()}))
    return path


def load_pruned(path, device=None):
    """Load a student saved by save_pruned, uniform or not: the one capgap call for either."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    meta_file = path / PLAN_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"uniform": True}
    if meta["uniform"]:
        return AutoModelForCausalLM.from_pretrained(path, device_map=device)
    plan = Plan.from_dict(meta["plan"])
    # rebuild the teacher's skeleton (parameters on meta, so free), cut it to the plan's
    # widths, then let the saved tensors fill it; the kept indices don't matter here, the
    # saved tensors are already in kept order
    student = skeleton(AutoConfig.for_model(**plan.teacher))
    first = lambda xs: list(range(len(xs)))
    slice_model(student, Plan(first(plan.hidden), plan.layers, [first(h) for h in plan.heads],
                              [first(n) for n in plan.neurons]), inplace=True)
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f, device=str(device or "cpu")))
    missing, unexpected = student.load_state_dict(state, strict=False, assign=True)
    student.tie_weights()  # assign=True replaced the shared embedding; re-share it
    still_meta = [n for n, p in student.named_parameters() if p.is_meta]
    if unexpected or still_meta:
        raise CapgapError(f"{path} does not match its {PLAN_FILE}: "
                          f"missing {still_meta[:3]}, unexpected {unexpected[:3]}")
    if (path / "generation_config.json").is_file():
        student.generation_config = GenerationConfig.from_pretrained(path)
    return student.eval()

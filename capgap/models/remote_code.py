"""A student whose layers have their own widths, saved the way Hugging Face ships such models:
a modeling file beside the weights, `auto_map` and the per-layer widths in config.json.

Then `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` builds it where
capgap is not installed (lm-evaluation-harness, serving tools, a colleague's notebook). The
modeling file is the family's template in capgap/models/templates with the shared helpers
(templates/common.py) written in place of the line that imports them, so it stands alone: it
imports only torch and transformers and builds every layer from the stock classes at that
layer's widths.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from capgap.models.adapters import adapter_for
from capgap.runtime.errors import CapgapError

MODELING_FILE = "modeling_capgap.py"
TEMPLATES = Path(__file__).parent / "templates"
# family: (template, config class, model class) as the template names them
FAMILIES = {
    "gpt_neox": ("gpt_neox.py", "CapgapGPTNeoXConfig", "CapgapGPTNeoXForCausalLM"),
    "gpt2": ("gpt2.py", "CapgapGPT2Config", "CapgapGPT2LMHeadModel"),
    "llama": ("llama.py", "CapgapLlamaConfig", "CapgapLlamaForCausalLM"),
}


INLINED = "# capgap: inlined"  # marks the import line of templates/common.py in a family's template


def modeling_source(family: str) -> str:
    """The modeling file of `family`: its template with templates/common.py written in."""
    template = (TEMPLATES / FAMILIES[family][0]).read_text()
    common = (TEMPLATES / "common.py").read_text()
    first = ast.parse(common).body[1].lineno  # the first statement after the docstring
    shared = "".join(common.splitlines(keepends=True)[first - 1:]).strip()
    (line,) = [line for line in template.splitlines() if line.endswith(INLINED)]
    return template.replace(line, f"# shared by every capgap modeling file (templates/common.py)\n{shared}\n")


def layer_widths(model) -> dict:
    """Per-layer widths of a (sliced) model, read from its modules: the config only holds the
    widest layer."""
    a = adapter_for(model)
    heads = [a.n_heads(layer) for layer in a.layers()]
    widths = {"head_dim": a.head_dim, "layer_heads": heads,
              "layer_intermediate": [a.n_neurons(layer) for layer in a.layers()]}
    if getattr(model.config, "num_key_value_heads", None):
        widths["layer_kv_heads"] = [h // a.heads_per_group for h in heads]
    return widths


def remote_config(model) -> dict:
    """config.json of `model` (a stock class, sliced) as the template's config class reads it."""
    family = model.config.model_type
    if family not in FAMILIES:
        raise CapgapError(f"model_type={family} has no modeling template (supported: {', '.join(FAMILIES)})")
    _, config_class, model_class = FAMILIES[family]
    module = Path(MODELING_FILE).stem
    config = model.config.to_dict()
    config.update(layer_widths(model), model_type=f"capgap_{family}", architectures=[model_class],
                  auto_map={"AutoConfig": f"{module}.{config_class}",
                            "AutoModelForCausalLM": f"{module}.{model_class}"})
    return config


def write_remote_code(model, folder: str | Path) -> None:
    """Turn a folder `model.save_pretrained` wrote into one stock transformers loads with
    trust_remote_code=True: its config.json gains the per-layer widths and auto_map, and the
    family's modeling file goes beside it."""
    folder = Path(folder)
    config = remote_config(model)
    (folder / MODELING_FILE).write_text(modeling_source(model.config.model_type))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

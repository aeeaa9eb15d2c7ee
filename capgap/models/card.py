"""The README.md every saved student carries: a Hugging Face model card (metadata block, then
prose) saying where the student came from, how it was made, how good it is, and the two ways
to load it. The metadata is huggingface_hub's ModelCardData, so the Hub reads it as its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capgap import __version__


@dataclass
class Card:
    teacher: str
    teacher_params: int
    student_params: int
    hidden: int
    widths: dict  # capgap.models.remote_code.layer_widths of the student
    uniform: bool
    config_hash: str
    teacher_layers: list[int] | None = None  # the teacher layers kept (pruned students)
    sparsity: float | None = None
    loss: str | None = None  # the distillation loss; None: pruned only
    alpha: float | None = None
    tokens: int | None = None
    val_loss: float | None = None
    teacher_val_loss: float | None = None
    harness: dict = field(default_factory=dict)  # capgap.eval.harness figures
    base_model: str | None = None  # the teacher's hub id, when it has one


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _shape(c: Card) -> str:
    heads, ffn = c.widths["layer_heads"], c.widths["layer_intermediate"]
    kv = c.widths.get("layer_kv_heads")
    if c.uniform:
        return (f"Uniform: {len(heads)} layers, hidden size {c.hidden}, {heads[0]} attention heads"
                f"{f' ({kv[0]} key/value heads)' if kv else ''} of size {c.widths['head_dim']}, "
                f"{ffn[0]} FFN neurons in every layer.\n")
    rows = ["| layer | teacher layer | heads | key/value heads | FFN neurons |",
            "|---:|---:|---:|---:|---:|"]
    for i, (h, f) in enumerate(zip(heads, ffn)):
        source = c.teacher_layers[i] if c.teacher_layers else "–"
        rows.append(f"| {i} | {source} | {h} | {kv[i] if kv else h} | {f} |")
    return (f"Per layer (globally ranked pruning): hidden size {c.hidden}, head size "
            f"{c.widths['head_dim']}.\n\n" + "\n".join(rows) + "\n")


def _harness(figs: dict) -> str:
    values = {k: v for k, v in figs.items() if isinstance(v, float) and not k.endswith("_stderr")}
    if not values:
        return "Not run (`eval=harness eval.tasks=[...]` runs lm-evaluation-harness on the student).\n"
    rows = ["| task | metric | value | stderr |", "|---|---|---:|---:|"]
    for key, value in values.items():
        task, _, metric = key.removeprefix("harness/").partition("/")
        stderr = figs.get(f"harness/{task}/{metric}_stderr")
        rows.append(f"| {task} | {metric} | {value:.4f} | {_num(stderr, '.4f')} |")
    return "\n".join(rows) + "\n"


def model_card(c: Card) -> str:
    from huggingface_hub import ModelCardData

    meta = ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                         base_model=c.base_model,
                         tags=["capgap", "pruned", *(["distilled"] if c.loss else [])]).to_yaml()
    made = (f"pruned from **{c.teacher}** and distilled from it with the `{c.loss}` loss"
            f"{f' (alpha {c.alpha})' if c.alpha is not None else ''} on {c.tokens:,} tokens"
            if c.loss else f"pruned from **{c.teacher}** (not distilled)")
    return f"""---
{meta}
---

# A {c.student_params:,}-parameter student of {c.teacher}

Made with capgap {__version__} (config hash `{c.config_hash}`): {made}.

## Size

| | parameters |
|---|---:|
| teacher ({c.teacher}) | {c.teacher_params:,} |
| student | {c.student_params:,} |
| sparsity (layers) | {_num(c.sparsity, '.1%')} |

{_shape(c)}
## Quality

| held-out loss (nats/token) | value |
|---|---:|
| student | {_num(c.val_loss, '.4f')} |
| teacher | {_num(c.teacher_val_loss, '.4f')} |

Downstream benchmarks (lm-evaluation-harness):

{_harness(c.harness)}
## Loading

Without capgap (stock transformers; {'a stock folder' if c.uniform else
'the modeling file beside the weights builds each layer at its own widths'}):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("DIR", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("DIR", trust_remote_code=True)
```

With capgap (the stock class capgap pruned, as it trains and prunes it further):

```python
from capgap.prune import load_pruned
model = load_pruned("DIR")
```

`DIR` is this folder.{' A uniform student needs no `trust_remote_code`.' if c.uniform else ''}
"""

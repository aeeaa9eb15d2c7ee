"""Every saved student carries a Hugging Face model card saying what it is and how to load it."""

from huggingface_hub import ModelCard

from capgap import __version__
from capgap.models.card import Card, model_card

WIDTHS = {"head_dim": 8, "layer_heads": [4, 2, 6], "layer_kv_heads": [2, 1, 3], "layer_intermediate": [64, 32, 88]}


def card(**kw) -> str:
    facts = dict(teacher="pythia_410m", teacher_params=405_334_016, student_params=123_456_789, hidden=512,
                 widths=WIDTHS, uniform=False, config_hash="abc123def4567890", teacher_layers=[0, 2, 5],
                 sparsity=0.6, loss="paper", alpha=0.5, tokens=2_000_000, val_loss=3.21, teacher_val_loss=2.98,
                 harness={"harness/hellaswag/acc": 0.31, "harness/hellaswag/acc_stderr": 0.02,
                          "harness/higher_is_better": {"harness/hellaswag/acc": True}},
                 base_model="EleutherAI/pythia-410m")
    return model_card(Card(**{**facts, **kw}))


def test_card_has_metadata_the_hub_reads_and_every_fact():
    text = card()
    meta = ModelCard(text).data
    assert meta.library_name == "transformers" and meta.base_model == "EleutherAI/pythia-410m"
    assert "distilled" in meta.tags
    for fact in ("405,334,016", "123,456,789", "60.0%", "`paper` loss (alpha 0.5) on 2,000,000 tokens",
                 "| student | 3.2100 |", "| teacher | 2.9800 |", "| hellaswag | acc | 0.3100 | 0.0200 |",
                 f"capgap {__version__}", "abc123def4567890",
                 'AutoModelForCausalLM.from_pretrained("DIR", trust_remote_code=True)', 'load_pruned("DIR")'):
        assert fact in text, fact
    # one row per layer, with the teacher layer it came from and its own widths
    assert "| 1 | 2 | 2 | 1 | 32 |" in text and "| 2 | 5 | 6 | 3 | 88 |" in text


def test_pruned_only_uniform_student_without_benchmarks():
    text = card(uniform=True, widths={**WIDTHS, "layer_heads": [4] * 3, "layer_kv_heads": [2] * 3,
                                      "layer_intermediate": [64] * 3},
                loss=None, alpha=None, tokens=None, harness={}, base_model=None)
    assert "(not distilled)" in text and "Uniform: 3 layers, hidden size 512, 4 attention heads" in text
    assert "Not run (`eval=harness" in text and "needs no `trust_remote_code`" in text
    assert ModelCard(text).data.base_model is None and "| layer |" not in text

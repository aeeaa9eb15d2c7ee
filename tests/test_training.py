"""capgap.runtime.training's one precision rule, as every pass outside the Trainer reads it."""

import pytest
import torch

from capgap.runtime.training import autocast_for, precision_dtype


@pytest.mark.parametrize("precision, want", [
    ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("bf16", torch.bfloat16),
    ("16-mixed", torch.float16), ("16-true", torch.float16), ("16", torch.float16), (16, torch.float16),
    ("32-true", None), ("32", None), (32, None), ("64-true", None)])
def test_precision_dtype_reads_mixed_and_true_alike(precision, want):
    assert precision_dtype(precision) == want


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_autocast_outside_the_trainer_follows_the_same_rule(precision):
    with autocast_for({"precision": precision}, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for({"precision": "32-true"}, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_one_pass_in_batches_is_what_the_loader_yields_without_train_steps(tmp_path, batch_size):
    """training.fit counts an epoch as len(train_set) // batch_size without building the loader."""
    from omegaconf import OmegaConf
    from tiny_checkpoint import make_checkpoint, write_corpus
    from transformers import AutoTokenizer

    from capgap.data.datamodule import CorpusDataModule

    tok = AutoTokenizer.from_pretrained(make_checkpoint(tmp_path / "m"))
    data = OmegaConf.create({"kind": "local", "path": str(write_corpus(tmp_path / "c.jsonl", docs=60)),
                             "text_key": "text", "val_fraction": 0.2, "max_tokens": None})
    dm = CorpusDataModule(tok, data, tmp_path / "cache", batch_size=batch_size, block_size=16)
    dm.setup()
    assert len(dm.train_set) % batch_size or batch_size == 1  # a ragged last batch is dropped in both
    assert len(dm.train_dataloader()) == len(dm.train_set) // dm.batch_size

"""Token cache, packing and the train/validation split, on small generated corpora."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from capgap.data import token_cache
from capgap.data.blocks import IGNORE, PackedBlocks, unigram_entropy
from capgap.data.bpe import train_bpe
from capgap.data.datamodule import CorpusDataModule
from capgap.runtime.errors import CapgapError


def make_corpus(folder, n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]
    path = folder / "corpus.jsonl"
    with path.open("w") as f:
        for i in range(n_docs):
            text = f"doc {i}: " + " ".join(rng.choice(words, size=rng.integers(20, 80)))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def local_cfg(path, **kw):
    return OmegaConf.create({"kind": "local", "path": str(path), "text_key": "text",
                             "val_fraction": 0.2, "max_tokens": None, **kw})


@pytest.fixture
def tokenizer(tmp_path):
    return train_bpe(local_cfg(make_corpus(tmp_path)), 300, tmp_path / "cache")


def test_packing_loses_and_duplicates_no_token():
    stream = np.arange(1000, dtype=np.uint16) % 97
    for block in (7, 100, 128, 1000):
        blocks = PackedBlocks(stream, block, pad_id=0)
        kept = torch.cat([b["input_ids"][b["labels"] != IGNORE] for b in blocks])
        assert kept.tolist() == stream.astype(np.int64).tolist()
        assert all(len(b["input_ids"]) == block for b in blocks)


def test_train_and_validation_are_disjoint_documents(tmp_path, tokenizer):
    cfg = local_cfg(make_corpus(tmp_path))
    folder, built = token_cache.build(tokenizer, cfg, tmp_path / "cache")
    assert built
    meta, streams = token_cache.load(folder)
    eos = meta["eos_token_id"]

    def docs(stream):
        ids = np.asarray(stream).tolist()
        out, cur = set(), []
        for t in ids:
            if t == eos:
                out.add(tokenizer.decode(cur))
                cur = []
            else:
                cur.append(t)
        return out

    train, val = docs(streams["train"]), docs(streams["val"])
    assert train and val and not (train & val)
    assert len(train) + len(val) == 60
    # every document ends with EOS, so the streams are whole documents
    assert streams["train"][-1] == eos and streams["val"][-1] == eos


def test_second_setup_does_no_tokenization(tmp_path, tokenizer, monkeypatch):
    cfg = local_cfg(make_corpus(tmp_path))
    first = CorpusDataModule(tokenizer, cfg, tmp_path / "cache", batch_size=2, block_size=16)
    first.setup()
    assert first.tokenized

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(type(tokenizer), "__call__", boom)
    second = CorpusDataModule(tokenizer, cfg, tmp_path / "cache", batch_size=2, block_size=16)
    second.setup()
    assert not second.tokenized
    assert np.array_equal(second.streams["train"], first.streams["train"])
    batch = next(iter(second.train_dataloader()))
    assert batch["input_ids"].shape == (2, 16)


def test_setup_after_setup_checks_nothing_again(tmp_path, tokenizer, monkeypatch):
    # Lightning calls setup at every fit and validate of a job
    dm = CorpusDataModule(tokenizer, local_cfg(make_corpus(tmp_path)), tmp_path / "cache",
                          batch_size=2, block_size=16)
    dm.setup()

    def boom(*a, **k):
        raise AssertionError("the token cache was looked up again")

    monkeypatch.setattr(token_cache, "build", boom)
    dm.setup()
    dm.setup()
    assert dm.tokenized


def test_empty_corpus_is_one_clear_error(tmp_path, tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(CapgapError, match="empty corpus"):
        token_cache.build(tokenizer, local_cfg(empty), tmp_path / "cache")
    # no entry and no temp folder: only the folder of lock files
    assert [p.name for p in (tmp_path / "cache" / "tokens").iterdir()] == [".locks"]


def test_block_longer_than_corpus_is_one_clear_error(tmp_path, tokenizer):
    dm = CorpusDataModule(tokenizer, local_cfg(make_corpus(tmp_path)), tmp_path / "cache",
                          block_size=100_000)
    with pytest.raises(CapgapError, match="block_size=100000 is longer"):
        dm.setup()


def test_missing_local_path(tmp_path, tokenizer):
    with pytest.raises(CapgapError, match="does not exist"):
        token_cache.build(tokenizer, local_cfg(tmp_path / "nope"), tmp_path / "cache")


def test_corrupt_cache_is_named(tmp_path, tokenizer):
    folder, _ = token_cache.build(tokenizer, local_cfg(make_corpus(tmp_path)), tmp_path / "cache")
    (folder / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(CapgapError, match=str(folder)):
        token_cache.load(folder)


def test_unigram_entropy_of_uniform_stream():
    stream = np.tile(np.arange(8), 100)
    assert unigram_entropy(stream) == pytest.approx(np.log(8))


def test_embedded_corpus_is_real_english():
    from capgap.data.sources import embedded_documents

    docs = list(embedded_documents())
    assert len(docs) == 1189
    assert docs[0].startswith("In the beginning God created the heaven and the earth.")


def test_tokenizing_inside_a_stage_gives_the_bar_back_its_title(tmp_path, tokenizer, caplog):
    """The datamodule tokenizes inside pretraining's fit: "[capgap] tokenizing" is said, and
    the fit's bar (StageBar takes terminal.title()) still reads "pretraining", not "tokenizing"."""
    from capgap.runtime import terminal
    from capgap.runtime.progress import StageBar

    terminal.announce("pretraining", "micro_s")
    with caplog.at_level("INFO"):
        _, built = token_cache.build(tokenizer, local_cfg(make_corpus(tmp_path)), tmp_path / "cache")
    assert built and any("[capgap] tokenizing" in r.getMessage() for r in caplog.records)
    assert StageBar().train_description == "pretraining"
    with pytest.raises(CapgapError):  # a failed tokenization gives it back too
        empty = tmp_path / "empty.txt"
        empty.write_text(" \n")
        token_cache.build(tokenizer, local_cfg(empty), tmp_path / "cache")
    assert terminal.title() == "pretraining"

"""A byte-level BPE trained on a corpus, for the offline micro family (no hub tokenizer)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from capgap.data import sources
from capgap.runtime import distributed
from capgap.runtime.atomic import build_once

EOS = "<|endoftext|>"


def _train(data_cfg, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(sources.documents(data_cfg), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def train_bpe(data_cfg, vocab_size: int, cache_dir: str | Path) -> PreTrainedTokenizerFast:
    key = hashlib.sha256(f"{sources.source_id(data_cfg)}|{vocab_size}".encode()).hexdigest()[:16]
    out = Path(cache_dir) / "tokenizers" / f"bpe{vocab_size}-{key}"
    with distributed.current().zero_first():
        build_once(out, lambda tmp: _train(data_cfg, vocab_size).save_pretrained(tmp))
    return PreTrainedTokenizerFast.from_pretrained(out)

"""A tiny local teacher (GPT-NeoX, width 32, its own small BPE) and a small corpus, for
tests that go through `teacher.path=DIR` and `data=local` without pretraining anything."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the law of capacity gap says a bigger teacher is not always better for a small "
         "student so we measure the loss of each student against each teacher and fit a line "
         "through the optimal teachers of every student size").split()


def write_corpus(path: Path, docs: int = 200, seed: int = 0) -> Path:
    """A jsonl corpus of `docs` short random documents."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(docs):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            f.write(json.dumps({"text": f"Document {i}: {text}."}) + "\n")
    return path


def make_checkpoint(folder: Path, vocab_size: int = 200, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised model and its tokenizer, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos,
                                   unk_token=eos, pad_token=eos)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=128, bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder

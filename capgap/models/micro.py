"""The offline micro family: small GPT-NeoX teachers that capgap pretrains itself on the
embedded corpus the first time one is asked for, then caches on disk. Here: their tokenizer
and where the cache keeps them; the training is capgap.pretrain.teachers's (models never train)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from capgap.data.bpe import train_bpe
from capgap.data.token_cache import tokenizer_fingerprint

# the micro family always learns from the embedded corpus with its own BPE, whatever data= says
MICRO_DATA = OmegaConf.create({"kind": "embedded", "val_fraction": 0.05})


def micro_tokenizer(model_cfg, cache_dir):
    return train_bpe(MICRO_DATA, model_cfg.vocab_size, Path(cache_dir))


def cache_folder(model_cfg, pretrain_cfg, cache_dir, tokenizer) -> Path:
    """The teacher's cache entry, named by everything its weights depend on."""
    recipe = {"arch": model_cfg.arch, "config": OmegaConf.to_container(model_cfg.config, resolve=True),
              "tokenizer": tokenizer_fingerprint(tokenizer), "data": "embedded",
              "pretrain": {k: v for k, v in OmegaConf.to_container(pretrain_cfg, resolve=True).items()
                           if k != "seed"},
              "tokens": model_cfg.pretrain_tokens, "seed": pretrain_cfg.seed}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "teachers" / f"{model_cfg.name}-{key}"


"""The offline micro family: small GPT-NeoX teachers that capgap pretrains itself on the
embedded corpus the first time one is asked for, then caches on disk."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from capgap.atomic import build_once
from capgap.data.blocks import unigram_entropy
from capgap.data.bpe import train_bpe
from capgap.data.datamodule import CorpusDataModule
from capgap.data.token_cache import tokenizer_fingerprint
from capgap.lm_module import CausalLMModule
from capgap.models.zoo import build_from_config, load_local
from capgap import training

# the micro family always learns from the embedded corpus with its own BPE, whatever data= says
MICRO_DATA = OmegaConf.create({"kind": "embedded", "val_fraction": 0.05})


def micro_tokenizer(model_cfg, cfg):
    return train_bpe(MICRO_DATA, model_cfg.vocab_size, Path(cfg.paths.cache_dir))


def cache_folder(model_cfg, cfg, tokenizer) -> Path:
    recipe = {"arch": model_cfg.arch, "config": OmegaConf.to_container(model_cfg.config, resolve=True),
              "tokenizer": tokenizer_fingerprint(tokenizer), "data": "embedded",
              "pretrain": {k: v for k, v in OmegaConf.to_container(cfg.pretrain, resolve=True).items()
                           if k != "seed"},
              "tokens": model_cfg.pretrain_tokens, "seed": cfg.pretrain.seed}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.paths.cache_dir) / "teachers" / f"{model_cfg.name}-{key}"


def pretrain(model, tokenizer, data_cfg, cfg, tokens: int, run_dir: Path, ckpt_dir: Path,
             logger_cfg=None) -> tuple[torch.nn.Module, dict]:
    """Train `model` from scratch on `tokens` tokens of `data_cfg`; returns final metrics."""
    p = cfg.pretrain
    dm = CorpusDataModule(tokenizer, data_cfg, cfg.paths.cache_dir, batch_size=p.batch_size,
                          block_size=p.block_size, seed=p.seed, eval_batches=p.eval_batches,
                          block_key="pretrain.block_size")
    dm.setup()
    steps = training.steps_for(tokens, dm.tokens_per_batch)
    module = CausalLMModule(model, lr=p.lr, weight_decay=p.weight_decay,
                            warmup_fraction=p.warmup_fraction, min_lr_ratio=p.min_lr_ratio,
                            total_steps=steps)
    _, metrics = training.fit(module, dm, cfg.trainer, logger_cfg, run_dir, ckpt_dir, steps)
    metrics["unigram_entropy"] = unigram_entropy(dm.streams["val"])
    metrics["tokens"] = steps * dm.tokens_per_batch
    metrics["steps"] = steps
    return module.model, metrics


def pretrained_micro(model_cfg, cfg, run_dir: Path | None = None):
    """(model, tokenizer) of a micro teacher, pretraining it first if it is not cached. Jobs
    that ask for it at once wait for the first one's pretraining and then load its result."""
    tokenizer = micro_tokenizer(model_cfg, cfg)
    folder = cache_folder(model_cfg, cfg, tokenizer)
    made = {}

    def build(tmp: Path):
        torch.manual_seed(cfg.pretrain.seed)
        config = dict(OmegaConf.to_container(model_cfg.config, resolve=True))
        config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        model = build_from_config(model_cfg.arch, config)
        # a killed pretraining resumes from folder/ckpt on the next run (under the same lock)
        model, metrics = pretrain(model, tokenizer, MICRO_DATA, cfg, model_cfg.pretrain_tokens,
                                  Path(run_dir or folder / "logs"), folder / "ckpt", cfg.get("logger"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=1))
        made["model"] = model

    if build_once(folder / "model", build, collective=True):
        shutil.rmtree(folder / "ckpt", ignore_errors=True)
        if "model" in made:
            return made["model"].eval(), tokenizer
    return load_local(folder / "model", key=f"cached teacher {folder}")

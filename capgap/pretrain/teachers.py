"""Pretraining from scratch: how the offline micro family is made (task=pretrain, and the
first time any task asks for a micro teacher). It sits above models/ and data/, which it calls;
they never import training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf

from capgap.data.blocks import unigram_entropy
from capgap.data.datamodule import CorpusDataModule
from capgap.models.micro import MICRO_DATA, cache_folder, micro_tokenizer
from capgap.models.zoo import build_from_config, load_local, load_model
from capgap.pretrain.lm_module import CausalLMModule
from capgap.runtime import distributed, training
from capgap.runtime.atomic import build_value
from capgap.runtime.terminal import announce

METRICS = "pretrain_metrics.json"  # beside the model in its cache entry


def pretrain(model, tokenizer, data_cfg, p, trainer_cfg, cache_dir, tokens: int, run_dir: Path, ckpt_dir: Path,
             logger_cfg=None) -> tuple[torch.nn.Module, dict]:
    """Train `model` from scratch on `tokens` tokens of `data_cfg` with the `pretrain` settings
    `p`; returns final metrics."""
    # one process, whatever the job's devices: the teacher is a cache entry every device count shares
    trainer_cfg = training.single_process(trainer_cfg)
    dm = CorpusDataModule(tokenizer, data_cfg, cache_dir, batch_size=p.batch_size,
                          block_size=p.block_size, seed=p.seed, eval_batches=p.eval_batches,
                          block_key="pretrain.block_size")
    dm.setup()
    steps = training.steps_for(tokens, dm.tokens_per_batch, trainer_cfg)
    module = CausalLMModule(model, lr=p.lr, weight_decay=p.weight_decay,
                            warmup_fraction=p.warmup_fraction, min_lr_ratio=p.min_lr_ratio,
                            total_steps=steps)
    _, metrics = training.fit(module, dm, trainer_cfg, logger_cfg, run_dir, ckpt_dir, steps)
    metrics["unigram_entropy"] = unigram_entropy(dm.streams["val"])
    metrics["tokens"] = steps * training.tokens_per_step(trainer_cfg, dm.tokens_per_batch)
    metrics["steps"] = steps
    return module.model, metrics


class Pretrained(NamedTuple):
    model: torch.nn.Module
    tokenizer: object
    folder: Path  # the cache entry the model is saved in
    built: bool  # whether this call pretrained it (task=pretrain reports a reused cache)
    metrics: dict  # of its pretraining, whichever job ran it


def pretrained_micro(model_cfg, pretrain_cfg, trainer_cfg, cache_dir, logger_cfg=None,
                     run_dir: Path | None = None) -> Pretrained:
    """A micro teacher, pretrained first if it is not cached. Jobs that ask for it at once
    wait for the first one's pretraining and then load its result. It is pretrained on one
    process under the config's pretrain seed, so 1 and N devices, and every `seed=` of a study,
    share one teacher."""
    tokenizer = micro_tokenizer(model_cfg, cache_dir)
    folder = cache_folder(model_cfg, pretrain_cfg, cache_dir, tokenizer)

    def make():
        announce("pretraining", f"{model_cfg.name} on {model_cfg.pretrain_tokens:,} tokens of the embedded "
                                "corpus (once; cached)")
        torch.manual_seed(pretrain_cfg.seed)
        config = dict(OmegaConf.to_container(model_cfg.config, resolve=True))
        config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        model = build_from_config(model_cfg.arch, config)
        # a killed pretraining resumes from folder/ckpt on the next run (under the same lock)
        model, metrics = pretrain(model, tokenizer, MICRO_DATA, pretrain_cfg, trainer_cfg, cache_dir,
                                  model_cfg.pretrain_tokens, Path(run_dir or folder / "logs"), folder / "ckpt",
                                  logger_cfg)
        return model, tokenizer, metrics

    def save(made, tmp: Path):
        model, tok, metrics = made
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=1))

    def load(path: Path):
        model, tok = load_local(path, key=f"cached teacher {folder}")
        return model, tok, json.loads((path / METRICS).read_text())

    # rank 0 pretrains it on its own device while the other ranks wait, then they load it
    with distributed.current().zero_first():
        (model, tok, metrics), built = build_value(folder / "model", make, save, load)
    if built:
        shutil.rmtree(folder / "ckpt", ignore_errors=True)
    return Pretrained(model.eval(), tok, folder / "model", built, metrics)


def load_teacher(model_cfg, pretrain_cfg, trainer_cfg, cache_dir, logger_cfg=None):
    """models.zoo.load_model, pretraining a micro teacher first when the cache has none."""
    if model_cfg.get("source") == "micro" and not model_cfg.get("path"):
        made = pretrained_micro(model_cfg, pretrain_cfg, trainer_cfg, cache_dir, logger_cfg)
        return made.model, made.tokenizer
    return load_model(model_cfg, cache_dir)

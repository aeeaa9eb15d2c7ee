"""The config's typed schema (capgap/runtime/schema.py): a wrong key or type is one line before
Hydra starts, every option of every group composes against it, it follows Lightning's own
signatures, and docs/configuration.md lists exactly its keys."""

import inspect
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf.errors import ValidationError

from capgap.runtime import schema
from capgap.runtime.errors import CapgapError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def run_py(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                       "CAPGAP_CACHE": str(tmp_path / "cache")})


@pytest.mark.parametrize("args, key, says", [
    (["distill.lr=abc"], "distill.lr", "could not be converted to Float"),
    (["distill.tokenz=5"], "distill.tokenz", "did you mean distill.tokens?"),
    (["+distill.tokenz=5"], "distill.tokenz", "did you mean distill.tokens?"),
    (["-m", "teacher=micro_xs,micro_s", "distill.lr=1e-3,abc"], "distill.lr", "could not be converted"),
    (["prune.sparsity=half"], "prune.sparsity", "could not be converted to Float"),
    (["task=train"], "task=train", "is not one of"),
])
def test_a_wrong_key_or_type_is_one_line_before_anything_runs(tmp_path, args, key, says):
    p = run_py(tmp_path, *args)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "HYDRA_FULL_ERROR" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capgap: error: ") and key in lines[0] and says in lines[0], lines
    # refused before Hydra made a run or sweep folder, let alone a job
    assert sorted(q.name for q in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_a_preset_sweeps_values_are_checked_too(tmp_path, monkeypatch):
    """`hydra.sweeper.params` of a preset are overrides like those of the command line."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    bad = (conf / "experiment" / "micro_law.yaml").read_text().replace("seed: 0,1,2", "seed: 0,x")
    (conf / "experiment" / "bad_law.yaml").write_text(bad)
    monkeypatch.setattr("capgap.runtime.confdir.conf_dir", lambda: conf)
    schema.check_overrides(["-m", "experiment=micro_law"])  # the preset itself is sound
    with pytest.raises(CapgapError, match="^seed: "):
        schema.check_overrides(["-m", "experiment=bad_law"])


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["paths.run_dir=/r", "paths.cache_dir=/c", *overrides])


def test_the_composed_config_is_the_schemas_type():
    cfg = compose_with()
    assert cfg.distill._metadata.object_type is schema.DistillConfig
    with pytest.raises(ValidationError):
        cfg.distill.lr = "abc"  # and it stays typed for whoever sets a value later


def test_typed_makes_objects_and_checks_sizes():
    job = schema.typed(compose_with("student.size=250K", "store.url=/s"))
    assert isinstance(job, schema.Config) and isinstance(job.distill.loss, schema.LossConfig)
    assert job.student.size == "250K" and job.distill.lr == 0.002
    with pytest.raises(CapgapError, match="student.size"):
        schema.typed(compose_with("student.size=abc", "store.url=/s"))
    with pytest.raises(CapgapError, match="tokens_per_param"):
        schema.typed(compose_with("distill.tokens_per_param=-3", "store.url=/s"))


def test_a_key_added_with_plus_is_refused_not_dropped():
    cfg = compose_with("+distill.tokenz=5", "store.url=/s")  # Hydra forces the add
    with pytest.raises(CapgapError, match="distill.tokenz is not a key"):
        schema.typed(cfg)
    schema.check_keys(compose_with("+teacher.config.rope_theta=10000"))  # a free-form mapping takes any key


# arguments of lightning.Trainer that capgap sets itself (capgap.runtime.training.fit and
# build_trainer), or that would break the token budget, so the schema leaves them out
SET_BY_CAPGAP = {"self", "logger", "max_epochs", "min_epochs", "max_steps", "min_steps", "fast_dev_run",
                 "limit_train_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches",
                 "enable_checkpointing", "use_distributed_sampler", "default_root_dir", "barebones",
                 "reload_dataloaders_every_n_epochs", "enable_autolog_hparams", "model_registry"}


def test_the_trainer_schema_is_lightnings_signature():
    import lightning as L

    lightning = set(inspect.signature(L.Trainer.__init__).parameters)
    ours = {f.name for f in fields(schema.TrainerConfig)} - {"_target_", "checkpoint_every"}
    assert ours <= lightning, sorted(ours - lightning)
    # a new Lightning argument is a decision: into the schema, or into SET_BY_CAPGAP
    assert lightning - SET_BY_CAPGAP <= ours, sorted(lightning - SET_BY_CAPGAP - ours)


def test_every_logger_key_is_an_argument_of_a_logger():
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    accepted = set(inspect.signature(TensorBoardLogger.__init__).parameters) | set(
        inspect.signature(CSVLogger.__init__).parameters)
    ours = {f.name for f in fields(schema.LoggerConfig)} - {"_target_"}
    assert ours <= accepted, sorted(ours - accepted)


def test_every_option_of_every_group_composes_against_the_schema():
    groups = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONF.iterdir()
              if d.is_dir() and d.name != "hydra"}
    assert set(groups) >= {"teacher", "student", "prune", "distill", "data", "trainer", "logger", "store", "eval"}
    for group, options in groups.items():
        for option in options:
            extra = ["student.path=/s"] if (group, option) == ("student", "path") else []
            schema.check_keys(compose_with(f"{group}={option}", *extra))


def test_the_docs_list_every_key_of_the_schema():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert schema.keys_markdown() in page, (
        "docs/configuration.md's key list differs from the schema: paste `python -m capgap.runtime.schema`")
    assert "| `distill.lr` | float |" in schema.keys_markdown()


def test_a_config_read_back_from_yaml_gets_the_same_types_and_checks():
    """A job's other ranks read its resolved config from YAML (capgap.tasks.__main__): plain, so
    typed lays it over the schema and checks it as rank 0's."""
    from omegaconf import OmegaConf

    plain = OmegaConf.create(OmegaConf.to_yaml(compose_with("store.url=/s"), resolve=True))
    job = schema.typed(plain)
    assert isinstance(job, schema.Config) and isinstance(job.trainer, schema.TrainerConfig)
    plain.distill.lr = "abc"
    with pytest.raises(CapgapError, match=r"^distill\.lr: "):
        schema.typed(plain)

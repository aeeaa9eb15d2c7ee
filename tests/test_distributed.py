"""Where a process stands in its job, read from whoever started it (capgap.runtime.distributed.topology):
capgap's own children, srun, torchrun, a node of a multi-node job. Read only: the user's
variables are never rewritten (tests/test_ddp.py runs the launchers themselves)."""

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from capgap.runtime import distributed, training
from capgap.runtime.errors import CapgapError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
                 "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k in LAUNCHER_VARS or k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    return monkeypatch


def trainer(devices=2, num_nodes=None, accelerator="cpu"):
    return OmegaConf.create({"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes})


SLURM = dict(SLURM_NTASKS="4", SLURM_NNODES="2", SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_NODEID="1",
             SLURM_JOB_ID="123456", SLURM_JOB_NAME="study", SLURM_NODELIST="gpu[07-08]")


@pytest.mark.parametrize("variables, cfg, want", [
    ({}, trainer(1), (0, 0, 0, 1, "single")),
    ({}, trainer(2), (0, 0, 0, 2, "spawn")),
    ({"LOCAL_RANK": "1", "MASTER_PORT": "5000"}, trainer(2), (1, 1, 0, 2, "child")),
    ({"LOCAL_RANK": "1", "NODE_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "5000"}, trainer(2, 2),
     (3, 1, 1, 4, "child")),
    ({"NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "5000"}, trainer(1, 2), (1, 0, 1, 2, "nodes")),
    (SLURM, trainer(2, 2), (3, 1, 1, 4, "slurm")),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1", "WORLD_SIZE": "4",
      "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}, trainer(2, 2), (2, 0, 1, 4, "torchrun")),
])
def test_topology_from_each_launcher(clean_env, variables, cfg, want):
    for k, v in variables.items():
        clean_env.setenv(k, v)
    before = dict(os.environ)
    t = distributed.topology(cfg)
    assert (t.rank, t.local_rank, t.node_rank, t.world_size, t.launcher) == want
    assert dict(os.environ) == before  # read, never written


def test_slurm_address_and_port_as_lightning_derives_them(clean_env):
    for k, v in SLURM.items():
        clean_env.setenv(k, v)
    t = distributed.topology(trainer(2, 2))
    assert (t.address, t.port) == ("gpu07", 15000 + 3456)


def test_each_rank_trains_on_the_device_of_its_local_rank(clean_env):
    for k, v in SLURM.items():
        clean_env.setenv(k, v)
    clean_env.setattr(training, "uses_cuda", lambda cfg: True)
    clean_env.setattr(distributed, "_current", distributed.Job(distributed.topology(trainer(2, 2))))
    assert training.device_for(trainer(2, 2, "gpu")) == torch.device("cuda", 1)


@pytest.mark.parametrize("variables, cfg, needle", [
    (SLURM, trainer(1, 2), "asks for 2 processes, but slurm started 4"),
    ({}, trainer(1, 2), "trainer.num_nodes=2: set MASTER_ADDR and MASTER_PORT"),
])
def test_a_job_the_launcher_did_not_start_is_one_line(clean_env, variables, cfg, needle):
    for k, v in variables.items():
        clean_env.setenv(k, v)
    with pytest.raises(CapgapError, match=needle):
        distributed.topology(cfg)


def test_the_slurm_launcher_starts_one_task_per_device():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.gpus_per_node == 4

"""The ranks of one job: which processes run it, which one owns its side effects, and how they
stay together.

One model for every launcher: every rank runs the whole job from its start, as torchrun and
srun start them. `python run.py trainer.devices=N` starts ranks 1..N-1 itself when the job
begins (not at the first `trainer.fit`, as Lightning's launcher would): each child is handed
the job's resolved config, so it runs this job and only this one, whatever started rank 0
(run.py, a multirun, submitit, a notebook). Lightning is told the ranks through a cluster
environment that says the processes exist already, and uses the process group made here.

Global rank 0 owns every side effect (checkpoint folder, cache entries, run folder, student,
store row); the others wait where they need the result (`zero_first`, `barrier`), and never
take a lock meant for the job. The user's environment (NODE_RANK, MASTER_ADDR, SLURM_*) is
read, never written: children get theirs in their own environment.

A rank that fails says so in the rendezvous store; a watchdog thread on every rank beats a
heartbeat there and ends its rank when a peer failed or stopped beating, so a failure ends
the job within about a minute rather than after the process group's timeout.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from capgap.runtime.budget import devices_per_node, uses_cuda
from capgap.runtime.errors import CapgapError

# collectives wait this long for a rank that is building what they need (a teacher's
# pretraining, a tokenized corpus); a rank that died is found by the watchdog, not by this
COLLECTIVE_TIMEOUT = timedelta(hours=6)
BEAT_S = 1.0
# seconds without a heartbeat after which rank 0 calls a rank dead (CAPGAP_RANK_TIMEOUT)
STALE_S = float(os.environ.get("CAPGAP_RANK_TIMEOUT", 30))
GRACE_S = 10.0  # what a rank's own failure path gets before the watchdog ends it
CHILD = "CAPGAP_JOB"  # names the job a child rank belongs to (set only in children's env)
IMPORT_ROOT = Path(__file__).resolve().parents[2]  # the folder capgap is imported from: the children's PYTHONPATH


@dataclass(frozen=True)
class Topology:
    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    launcher: str  # single | spawn (this process starts the node's other ranks) | child | slurm | torchrun | nodes
    address: str = "127.0.0.1"
    port: int = 0  # 0: any free port (one node, ranks started here)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def _env_int(key: str, default: int = 0) -> int:
    return int(os.environ.get(key, default))


def _slurm_tasks() -> int:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return _env_int("SLURM_NTASKS", 1) if SLURMEnvironment.detect() else 1


def topology(trainer_cfg) -> Topology:
    """This process's place in the job the trainer config asks for, from whoever started it."""
    devices = devices_per_node(trainer_cfg)
    nodes = int(trainer_cfg.get("num_nodes") or 1)
    want = devices * nodes
    if "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "LOCAL_RANK", "WORLD_SIZE"} <= os.environ.keys():
        t = Topology(_env_int("RANK"), _env_int("LOCAL_RANK"), _env_int("GROUP_RANK", _env_int("NODE_RANK")),
                     _env_int("WORLD_SIZE", 1), _env_int("LOCAL_WORLD_SIZE", devices), "torchrun",
                     os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT"))
    elif _slurm_tasks() > 1:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        world = _env_int("SLURM_NTASKS")
        # node 0's address and the job's port as Lightning derives them (its SLURMEnvironment
        # refuses --ntasks without --ntasks-per-node, which srun runs may well use)
        address = os.environ.get("MASTER_ADDR") or \
            SLURMEnvironment.resolve_root_node_address(os.environ.get("SLURM_NODELIST", "127.0.0.1"))
        port = _env_int("MASTER_PORT") or 15000 + int(os.environ.get("SLURM_JOB_ID", "2910")[-4:])
        t = Topology(_env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID"), _env_int("SLURM_NODEID"), world,
                     world // max(1, _env_int("SLURM_NNODES", 1)), "slurm", address, port)
    elif "LOCAL_RANK" in os.environ:  # a child: of this module, or of any launcher that sets it
        node = _env_int("NODE_RANK")
        t = Topology(node * devices + _env_int("LOCAL_RANK"), _env_int("LOCAL_RANK"), node, want, devices,
                     "child", os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT"))
    else:
        node = _env_int("NODE_RANK")
        launcher = "spawn" if devices > 1 else ("nodes" if nodes > 1 else "single")
        if nodes > 1 and not {"MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
            raise CapgapError(f"trainer.num_nodes={nodes}: set MASTER_ADDR and MASTER_PORT (node 0's address "
                              "and a free port on it) and NODE_RANK on every node, or launch with srun/torchrun")
        address = os.environ.get("MASTER_ADDR", "127.0.0.1") if nodes > 1 else "127.0.0.1"
        # one node: any free port, so two jobs on one machine never meet at a MASTER_PORT
        port = _env_int("MASTER_PORT") if nodes > 1 else 0
        t = Topology(node * devices, 0, node, want, devices, launcher, address, port)
    if t.world_size != want:
        raise CapgapError(f"trainer.devices={trainer_cfg.get('devices')} × trainer.num_nodes={nodes} asks for "
                          f"{want} processes, but {t.launcher} started {t.world_size}: make them agree "
                          "(on SLURM, tasks per node = trainer.devices)")
    return t


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, inside a job or not (the multirun's end)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return _env_int("RANK") == 0
    if _slurm_tasks() > 1:
        return _env_int("SLURM_PROCID") == 0
    return _env_int("NODE_RANK") == 0 and _env_int("LOCAL_RANK") == 0


class Job:
    """The ranks of the running job and the few collectives capgap needs besides Lightning's."""

    def __init__(self, topo: Topology, group=None, key: str = "", store=None):
        self.topology, self.group, self.key, self.store = topo, group, key, store
        self._abort_hooks: list = []

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def world_size(self) -> int:
        return self.topology.world_size

    @property
    def is_zero(self) -> bool:
        return self.topology.is_zero

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def broadcast(self, value):
        """Rank 0's `value` on every rank (rank 0 decides; the others follow)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    @contextmanager
    def zero_first(self):
        """Rank 0 runs the block first (building whatever cache entry it needs, under its lock);
        the others run it once rank 0 is through, and find the entry built. Inside, each rank
        acts alone: current() is a one-process job, so nothing in the block waits for a peer
        (rank 0 pretrains a micro teacher on its own device)."""
        if self.world_size == 1:
            yield
            return
        if not self.is_zero:
            self.barrier()
        with _acting_alone(self):
            yield
        if self.is_zero:
            self.barrier()

    def on_abort(self, hook) -> None:
        """`hook(message)` runs on this rank if a peer's failure ends the job (rank 0: the failed row)."""
        self._abort_hooks.append(hook)

    def run_abort_hooks(self, message: str) -> None:
        hooks, self._abort_hooks = self._abort_hooks, []
        for hook in hooks:
            try:
                hook(message)
            except Exception as e:  # the job is ending: say it, never mask the real failure
                print(f"capgap: warning: while ending the job: {e}", file=sys.stderr, flush=True)


_SINGLE = Job(Topology(0, 0, 0, 1, 1, "single"))
_current = _SINGLE
_stores: dict = {}  # (address, port) → TCPStore, one server per process for all its jobs
_counter = itertools.count(1)


@contextmanager
def _acting_alone(job: Job):
    global _current
    t = job.topology
    _current = Job(Topology(0, t.local_rank, t.node_rank, 1, 1, "alone", t.address, t.port))
    try:
        yield
    finally:
        _current = job


def current() -> Job:
    """The running job's ranks (one process outside a job)."""
    return _current


def _store(topo: Topology):
    """The rendezvous store, made once per process: rank 0 serves it for every job of a
    multirun, so the ranks of the next job never meet a server that is going away."""
    key = (topo.address, topo.port)
    if key not in _stores:
        server = topo.is_zero
        _stores[key] = dist.TCPStore(topo.address, topo.port, is_master=server, wait_for_workers=False,
                                     timeout=timedelta(minutes=10))
        if server and topo.port == 0:
            _stores[(topo.address, _stores[key].port)] = _stores[key]
    return _stores[key]


class _Watchdog(threading.Thread):
    """Beats this rank's heartbeat into the store and watches the others' (rank 0) or rank 0's
    store (the rest); ends this rank when the job can no longer finish."""

    def __init__(self, job: Job, address: str, port: int, children=()):
        super().__init__(daemon=True, name="capgap-rank-watchdog")
        self.job, self.address, self.port, self.children = job, address, port, list(children)
        self.stop = threading.Event()
        self.failed = threading.Event()  # set by this rank's own failure path when it is done

    def _client(self):
        return dist.TCPStore(self.address, self.port, is_master=False, timeout=timedelta(seconds=30))

    def run(self) -> None:
        k, rank, world = self.job.key, self.job.rank, self.job.world_size
        try:
            store = self._client()
        except Exception as e:
            return self._end(f"rank {rank} cannot reach the rendezvous store: {e}")
        seen, changed = {}, {}
        while not self.stop.wait(BEAT_S):
            try:
                store.add(f"{k}/beat/{rank}", 1)
                if store.check([f"{k}/failed"]):
                    return self._end(store.get(f"{k}/failed").decode())
                for i, child in enumerate(self.children, 1):
                    if child.poll():  # exited with an error, maybe before it could say so
                        return self._end(f"local rank {i} exited with status {child.returncode}")
                if rank == 0:
                    now = time.monotonic()
                    for r in range(1, world):
                        beat = store.add(f"{k}/beat/{r}", 0)
                        if seen.get(r) != beat:
                            seen[r], changed[r] = beat, now
                        elif beat and now - changed[r] > STALE_S:
                            return self._end(f"rank {r} stopped answering for {STALE_S:.0f} s")
            except Exception:  # the store is rank 0's: it is gone
                if self.stop.is_set():
                    return
                return self._end("lost contact with rank 0 (it stopped)")

    def _end(self, message: str) -> None:
        # the rank's own failure path (an exception out of a collective) goes first
        if self.stop.is_set() or self.failed.wait(GRACE_S) or self.stop.is_set():
            return
        if self.job.is_zero:  # the job's one line; the other ranks end quietly
            print(f"capgap: error: {message}; the job stops", file=sys.stderr, flush=True)
        self.job.run_abort_hooks(message)
        os._exit(1)


def _children(topo: Topology, cfg, port: int, key: str) -> tuple[list[subprocess.Popen], str]:
    """Start this node's local ranks 1..n-1 on this job's resolved config."""
    from omegaconf import OmegaConf

    fd, path = tempfile.mkstemp(prefix="capgap-job-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    root = str(IMPORT_ROOT)
    procs = []
    for local in range(1, topo.local_world_size):
        env = dict(os.environ, LOCAL_RANK=str(local), NODE_RANK=str(topo.node_rank), MASTER_ADDR=topo.address,
                   MASTER_PORT=str(port),
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        env[CHILD] = key
        procs.append(subprocess.Popen([sys.executable, "-m", "capgap.tasks", path], env=env))
    return procs, path


@contextmanager
def job(cfg):
    """Run one job on every rank the trainer config asks for; yields its Job."""
    global _current
    topo = topology(cfg.trainer)
    if topo.world_size == 1:
        yield _SINGLE
        return
    cuda = uses_cuda(cfg.trainer)
    if cuda:
        torch.cuda.set_device(topo.local_rank)
    store = _store(topo)
    port = store.port
    # every rank names the job alike: a spawned child is told; ranks started by srun, torchrun
    # or on each node run the same sweep, so they count its jobs alike
    key = os.environ.get(CHILD) or (uuid.uuid4().hex[:12] if topo.launcher == "spawn" else f"job{next(_counter)}")
    procs, config = _children(topo, cfg, port, key) if topo.launcher == "spawn" else ([], None)
    j = Job(topo, None, key, store)
    # watching from before the rendezvous: a child that dies before it joins ends the job too
    dog = _Watchdog(j, topo.address, port, procs)
    dog.start()
    prefixed = dist.PrefixStore(f"{key}/pg", store)
    dist.init_process_group("nccl" if cuda else "gloo", store=prefixed, rank=topo.rank,
                            world_size=topo.world_size, timeout=COLLECTIVE_TIMEOUT)
    j.group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if cuda else dist.group.WORLD
    _current = j
    ok = False
    try:
        yield j
        ok = True
    except BaseException as e:
        # the first rank to fail names the failure; the others' errors follow from it (a
        # collective whose peer left), so they report the first one
        mine = f"rank {topo.rank} failed: {_first_line(e)}"
        try:
            first = store.compare_set(f"{key}/failed", "", mine).decode()
        except Exception:
            first = mine
        dog.failed.set()
        # a mistake of this rank's own (bad input: every rank finds it) is said as it is
        if first != mine and not isinstance(e, CapgapError):
            raise CapgapError(f"{first}; the job stops") from e
        raise
    finally:
        if ok:
            j.barrier()  # every rank is through: the watchdogs may stop
        dog.stop.set()
        dog.join(timeout=2 * BEAT_S + 1)
        if ok:
            j.barrier()  # and they have: rank 0's store may be left
        _current = _SINGLE
        dist.destroy_process_group()
        for p in procs:
            try:
                p.wait(timeout=60 if ok else 5)
            except subprocess.TimeoutExpired:
                p.kill()
        if config:
            Path(config).unlink(missing_ok=True)
        bad = [p.returncode for p in procs if p.returncode]
        if ok and bad:
            raise CapgapError(f"a local rank exited with status {bad[0]}")


def peer_failure() -> str | None:
    """What a peer said when it failed, if one did (rank 0 names it in the failed row)."""
    j = _current
    if j.world_size == 1:
        return None
    try:
        return j.store.get(f"{j.key}/failed").decode() if j.store.check([f"{j.key}/failed"]) else None
    except Exception:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]

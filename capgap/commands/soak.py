"""Kill -9 soak: a micro study sweep whose jobs are SIGKILLed at random moments and rerun until
the sweep completes, then checked against the same sweep run undisturbed.

    python -m capgap.commands.soak                      # 6 points, >= 10 kills, a few minutes on 2 cores
    python -m capgap.commands.soak --kills 20 --jobs 3

Each point is one `python run.py` job, as a cluster array runs them (`--jobs` at a time).
Kills aim in turn at tokenizing, pretraining, scoring, distilling and finishing (after the
store row), read from each job's log, at a random moment inside that phase; a phase that no
longer comes (its cache entry exists) gets a kill at a random moment of a random job instead.
Prints kills, points done, rows per point, partial rows, temporary files left and corrupt
cache entries; exits 1 unless every point is done exactly once, no row is partial, nothing is
left over and the fitted law equals the undisturbed one.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: run.py is there
TEACHERS = ("micro_xs", "micro_s")
SIZES = ("150K", "200K", "250K")
# tiny budgets: the soak checks that kills lose nothing, not what the law says
COMMON = ["task=study", "data.max_tokens=100000", "teacher.pretrain_tokens=16384", "prune.multiple=1", "prune.n_batches=2",
          "distill.tokens=12288", "distill.batch_size=8", "distill.block_size=64", "distill.eval_batches=2",
          "trainer=cpu", "trainer.checkpoint_every=4", "trainer.val_check_interval=8",
          "trainer.enable_progress_bar=false", "logger=csv"]
TARGETS = ("tokenizing", "pretraining", "scoring", "distilling", "finishing")
# the latest moment, after a phase shows in the log, at which its kill may fall (about its
# length on a busy 2-core machine, so most kills land inside it)
WITHIN = {"tokenizing": 3.0, "pretraining": 8.0, "scoring": 0.5, "distilling": 8.0, "finishing": 0.3}
PHASE_OF_ENTRY = {"tokenizers": "tokenizing", "tokens": "tokenizing", "teachers": "pretraining",
                  "scores": "scoring", "transfer": "distilling"}
CACHE_ENTRIES = ("tokenizers/*", "tokens/*", "teachers/*/model", "scores/*", "transfer/*")


@dataclass
class Job:
    point: str
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)

    def phase(self) -> str:
        """What the job is doing now, from the last telling line of its log."""
        phase, distilling = "starting", False
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return phase
        for line in text.splitlines():
            if m := re.search(r"\[capgap\] (building|waiting for another job building) cache entry \S+/"
                              r"(tokenizers|tokens|teachers|scores|transfer)/", line):
                phase = PHASE_OF_ENTRY[m[2]] if m[1] == "building" else "waiting"
            elif "[capgap] built cache entry" in line:
                phase = "distilling" if distilling else "loading"
            elif "[capgap] distilling:" in line:  # (after the student's scores)
                phase, distilling = "distilling", True
            elif "[capgap] distilled" in line or "already in store" in line:
                phase = "finishing"
        return phase


def points() -> list[tuple[str, str]]:
    # teachers interleaved, so both pretrain early and kills meet both
    return [(t, s) for s in SIZES for t in TEACHERS]


def command(teacher: str, size: str, store: Path, run_dir: Path) -> list[str]:
    # hydra.run.dir, not paths.run_dir: Hydra's own files (.hydra/, run.log) go there too, and
    # not into outputs/ of the checkout the jobs start in
    return [sys.executable, "run.py", *COMMON, f"teacher={teacher}", f"student.size={size}",
            f"store.url={store}", f"hydra.run.dir={run_dir}"]


def sweep(work: Path, cache: Path, jobs: int, kills: int, rng: random.Random, deadline: float,
          say=print) -> dict:
    """Run every point to completion, killing `kills` jobs on the way; returns what happened."""
    store, runs, logs = work / "store.sqlite", work / "runs", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CAPGAP_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    pending = [f"{t}@{s}" for t, s in points()]
    running: list[Job] = []
    attempts: dict[str, int] = {}
    killed: list[tuple[str, str]] = []
    failures: list[str] = []
    aim, aim_since, fire_at = TARGETS[0], time.time(), None
    while pending or running:
        if time.time() > deadline:
            for j in running:
                j.proc.kill()
                j.proc.wait()
            raise SystemExit(f"capgap: error: the soak passed its time limit with {len(pending) + len(running)} "
                             "points unfinished")
        while pending and len(running) < jobs:
            point = pending.pop(0)
            attempts[point] = attempts.get(point, 0) + 1
            teacher, size = point.split("@")
            log = logs / f"{point}.{attempts[point]}.log"
            with log.open("w") as f:
                proc = subprocess.Popen(command(teacher, size, store, runs / point), cwd=ROOT, env=env,
                                        stdout=f, stderr=subprocess.STDOUT)
            running.append(Job(point, proc, log))
        for j in [j for j in running if j.proc.poll() is not None]:
            running.remove(j)
            if j.proc.returncode == 0:
                continue
            if j.proc.returncode != -signal.SIGKILL:
                failures.append(f"{j.point} exited {j.proc.returncode}: "
                                + " | ".join(j.log.read_text(errors="replace").splitlines()[-5:]))
                if len(failures) > 3:
                    raise SystemExit("capgap: error: jobs fail without being killed:\n" + "\n".join(failures))
            pending.append(j.point)  # killed: run it again
        if len(killed) < kills and running:
            if fire_at is None and any(j.phase() == aim for j in running):
                fire_at = time.time() + rng.uniform(0, WITHIN[aim])  # a random moment inside the phase
            elif fire_at is None and aim != "any" and time.time() - aim_since > (45 if pending else 3):
                # (in the last wave the sweep would end before the kills are spent)
                aim, fire_at = "any", time.time() + rng.uniform(0, 2)  # that phase no longer comes
            if fire_at is not None and time.time() >= fire_at:
                fire_at = None
                victims = running if aim == "any" else [j for j in running if j.phase() == aim]
                if victims:
                    j = rng.choice(victims)
                    phase = j.phase()
                    j.proc.send_signal(signal.SIGKILL)
                    j.proc.wait()
                    killed.append((j.point, phase))
                    say(f"[soak] kill {len(killed)}: {j.point} while {phase} "
                        f"({time.time() - j.started:.1f}s into attempt {attempts[j.point]})")
                    aim, aim_since = TARGETS[len(killed) % len(TARGETS)], time.time()
                # else the phase ended before its moment: wait for it to come again
        time.sleep(0.05)
    return {"kills": killed, "attempts": attempts, "failures": failures, "store": store, "runs": runs}


def check(work: Path, cache: Path, outcome: dict) -> dict:
    from capgap.law.fit import fit, points_from_rows
    from capgap.law.store import Store
    from capgap.runtime.atomic import LOCKS, entry_problem, is_temp
    from capgap.runtime.errors import CapgapError

    rows = Store(str(outcome["store"])).results(None)
    done = [r for r in rows if r["status"] == "done"]
    per_point = {f"{t}@{s}": 0 for t, s in points()}
    by_hash = {}
    for r in done:
        by_hash.setdefault(r["config_hash"], []).append(r)
    for point in per_point:
        log_dir = outcome["runs"] / point
        metrics = log_dir / "metrics.json"
        if metrics.is_file():
            import json

            h = json.loads(metrics.read_text()).get("config_hash")
            per_point[point] = len(by_hash.get(h, []))

    def partial(r) -> bool:
        need = ("metric", "teacher_params", "student_params", "config_hash")
        return r["status"] == "done" and any(r.get(k) is None or (isinstance(r[k], float) and not math.isfinite(r[k]))
                                             for k in need)

    temps = [p for folder in (cache, work) for p in folder.rglob("*") if is_temp(p.name)]
    entries = [p for pattern in CACHE_ENTRIES for p in cache.glob(pattern)
               if p.is_dir() and p.name != LOCKS]  # .locks/ holds the entries' lock files
    corrupt = [p for p in entries if entry_problem(p) is not None]
    try:
        law = fit(points_from_rows(done, "soak store"), n_boot=200)
    except CapgapError as e:  # 3 students x 2 teachers: fewer pairs than the joint fit's parameters
        law = str(e)
    return {"rows": rows, "done": done, "per_point": per_point, "partial": sum(map(partial, rows)),
            "temps": temps, "entries": entries, "corrupt": corrupt, "law": law,
            "metrics": {(r["teacher"], r["student_params"]): r["metric"] for r in done}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m capgap.commands.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs to deliver (default 10)")
    ap.add_argument("--jobs", type=int, default=2, help="jobs running at once (default 2)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill schedule (default: random)")
    ap.add_argument("--time-limit", type=float, default=1800, help="give up after this many seconds")
    ap.add_argument("--work", type=Path, default=None, help="folder for caches, stores and logs (default: a temp one)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    start = time.time()
    deadline = start + args.time_limit
    work = args.work or Path(tempfile.mkdtemp(prefix="capgap-soak-"))
    print(f"[soak] {len(points())} points x {args.jobs} at once, {args.kills} kills, seed {seed}, in {work}", flush=True)

    t0 = time.time()
    ref_out = sweep(work / "undisturbed", work / "undisturbed" / "cache", args.jobs, 0, rng, deadline)
    ref = check(work / "undisturbed", work / "undisturbed" / "cache", ref_out)
    print(f"[soak] undisturbed sweep: {len(ref['done'])} points in {time.time() - t0:.0f}s", flush=True)

    t0 = time.time()
    out = sweep(work / "soak", work / "soak" / "cache", args.jobs, args.kills, rng, deadline,
                say=lambda m: print(m, flush=True))
    res = check(work / "soak", work / "soak" / "cache", out)
    soak_time = time.time() - t0

    phases = {}
    for _, phase in out["kills"]:
        phases[phase] = phases.get(phase, 0) + 1
    law, ref_law = res["law"], ref["law"]
    same_metrics = res["metrics"] == ref["metrics"]
    # a law from each store, or the same reason neither could be fitted (held-out losses decide then)
    same_law = (law == ref_law) if isinstance(law, str) or isinstance(ref_law, str) else \
        (law.a, law.b) == (ref_law.a, ref_law.b)
    once = all(n == 1 for n in res["per_point"].values())
    print()
    print(f"kills:                  {len(out['kills'])} ({', '.join(f'{k} {v}' for k, v in sorted(phases.items()))})")
    print(f"reruns:                 {sum(out['attempts'].values()) - len(out['attempts'])}"
          f" ({len(out['failures'])} after a failure that was no kill)")
    for f in out["failures"]:
        print(f"  {f}")
    print(f"points done:            {sum(n > 0 for n in res['per_point'].values())}/{len(res['per_point'])}")
    print(f"rows per point:         {', '.join(f'{p} {n}' for p, n in res['per_point'].items())}")
    print(f"rows in store:          {len(res['rows'])} ({len(res['done'])} done)")
    print(f"partial rows:           {res['partial']}")
    print(f"temporary files left:   {len(res['temps'])}{''.join(chr(10) + '  ' + str(p) for p in res['temps'])}")
    print(f"corrupt cache entries:  {len(res['corrupt'])} of {len(res['entries'])}")
    print(f"held-out losses equal:  {same_metrics}")
    if isinstance(law, str) or isinstance(ref_law, str):
        print(f"fitted law:             none ({law}); undisturbed: {ref_law if isinstance(ref_law, str) else 'fitted'}"
              f"  equal: {same_law}")
    else:
        print(f"fitted law:             T* = {law.a:.6f}·S {'+-'[law.b < 0]} {abs(law.b):.1f}   "
              f"(undisturbed: T* = {ref_law.a:.6f}·S {'+-'[ref_law.b < 0]} {abs(ref_law.b):.1f})  equal: {same_law}")
    print(f"time:                   soak sweep {soak_time:.0f}s, total {time.time() - start:.0f}s")
    ok = (len(out["kills"]) >= args.kills and not out["failures"] and once and res["partial"] == 0 and not res["temps"]
          and not res["corrupt"] and same_law and same_metrics)
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

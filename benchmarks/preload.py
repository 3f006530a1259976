"""Preloaded workers against exec'd ones: memory per worker, copy-on-write decay, start-up, `auto` in 512 MB.

    .venv/bin/python benchmarks/preload.py [--runs 3] [--workers 8] [--limit-mb 512] [--no-install]

Two apps, each run exec'd (every worker its own interpreter) and preloaded (imported once in a
template, workers forked from it), the two modes in alternation, against a private redis-server:
- example: the project's RQ example (send_welcome_email: 2, crunch_data: 5);
- heavy: `benchmarks/apps/heavy_app.py`, which imports numpy, pandas and scipy (about 120 MB);
  the benchmark pip-installs them into this interpreter unless --no-install. Exec'd, its workers
  import it at start through RQ's settings module (`rq worker -c heavy_app`), RQ's own way to spare
  each job's work-horse the import; with the default command a horse imports a job's module for
  every job (the example's are light enough for that).
Figures: PSS per idle worker (each worker the pool lists, its work-horse included, read from /proc,
not from the pool), PSS per worker after 100 jobs each, the template's, the manager's and the
monitor's PSS (the monitor runs in both modes: the pool has a Redis URL), seconds from launch until every
worker has registered with Redis, and the count `count: auto` settles on in a cgroup v1 memory
group of --limit-mb (a Standard-1X dyno's 512 MB) with the peak usage and OOM kills. Medians of
--runs; JSON in benchmarks/results/preload.json, markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import terminate, wait_for
from memory_auto import MIB, memory_cgroup, peak_and_oom_kills, settle

ROOT = Path(__file__).resolve().parent.parent
APPS_DIR = Path(__file__).resolve().parent / "apps"
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(APPS_DIR)]

from redis import Redis  # noqa: E402
from redis_fixture import start_redis, stop_redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.registry import FinishedJobRegistry  # noqa: E402

from entrypoint.control import request  # noqa: E402
from entrypoint.reaper import below, children_index, process_table  # noqa: E402

HEAVY_PACKAGES = ("numpy", "pandas", "scipy")
MODES = ("exec", "preload")
JOBS_PER_WORKER = 100


@dataclass(frozen=True)
class App:
    name: str
    groups: dict[str, int]  # queue -> workers
    auto_queue: str  # the queue whose group is `count: auto` in the memory benchmark
    preload: str  # the module the template imports
    job: str  # the function each job runs, and its arguments per job number
    env: dict[str, str]
    exec_imports: bool = False  # exec'd workers import the app at start (else each job's horse does)

    def job_args(self, number: int) -> tuple:
        return (1000 + number,) if self.name == "example" else (2000, number)

    def config(self, mode: str, auto: bool = False) -> str:
        if auto:
            groups = f"{self.auto_queue}:\n  count: auto\n  max: 60\n"
            settings = "  memory_interval: 0.5\n  memory_headroom: 0.85\n"
        else:
            groups = "".join(f"{queue}: {count}\n" for queue, count in self.groups.items())
            settings = ""
        if mode == "preload":
            settings += f"  preload: [{self.preload}]\n"
        elif self.exec_imports:
            # RQ's own way to have a worker import the app at start (its settings module, -c),
            # so each job's work-horse inherits it instead of importing it again.
            settings += (f"  command: ['{sys.executable}', -m, rq.cli, worker, --url, '${{REDIS_URL}}', "
                         f"--worker-class, entrypoint.rq_reliable.ReliableWorker, -c, {self.preload}, '{{queues}}']\n")
        env = "".join(f"    {k}: {v}\n" for k, v in self.env.items())
        return f"{groups}pool:\n  term_timeout: 10\n{settings}" + (f"  env:\n{env}" if env else "")

    @property
    def workers(self) -> int:
        return sum(self.groups.values())


def apps(heavy_workers: int) -> list[App]:
    return [
        App("example", {"send_welcome_email": 2, "crunch_data": 5}, "crunch_data", "example.jobs",
            "example.jobs.crunch_data", {"RQ_CONNECTION_CLASS": "example.connection.Redis"}),
        App("heavy", {"heavy": heavy_workers}, "heavy", "heavy_app", "heavy_app.summarize", {}, exec_imports=True),
    ]


def install_heavy_stack() -> None:
    missing = [p for p in HEAVY_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        print(f"installing {' '.join(missing)} for the heavy app...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


@contextlib.contextmanager
def pool(app: App, mode: str, redis_url: str, tmp: Path, cgroup: Path | None = None,
         auto: bool = False) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """The pool running (process, control socket, launch time); stopped and reaped at the end."""
    config = tmp / f"{app.name}-{mode}.yml"
    config.write_text(app.config(mode, auto))
    socket_path = str(tmp / f"{app.name}-{mode}-{uuid.uuid4().hex[:6]}.sock")
    command = [sys.executable, "-m", "entrypoint", "--config", str(config), "--socket", socket_path]
    if cgroup is not None:
        command = ["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *command]
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": f"{ROOT}:{APPS_DIR}"}
    launched = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process, socket_path, launched
    finally:
        terminate(process, 30)


def pss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) * 1024


def footprint(manager: int, status: dict) -> dict:
    """PSS of the manager, its helpers (the template, the monitor), and each worker the pool lists,
    with its children, from /proc."""
    index = children_index(process_table())
    listed = {row["pid"] for row in status["workers"]}
    workers = [pid for pid in index.get(manager, []) if pid in listed]
    per_worker = [pss(pid) + sum(pss(child) for child in below(pid, index)) for pid in workers]
    helpers = {name: pss(row["pid"]) if row and row.get("pid") else 0
               for name, row in (("template", status.get("template")), ("monitor", status.get("monitor")))}
    return {"workers": per_worker, **helpers, "manager": pss(manager)}


def run_jobs(connection: Redis, app: App, per_worker: int) -> None:
    """per_worker jobs for every worker, spread over the app's queues as its workers are; wait for all."""
    total = 0
    for queue_name, count in app.groups.items():
        queue = Queue(queue_name, connection=connection)
        data = [Queue.prepare_data(app.job, args=app.job_args(n), result_ttl=600) for n in range(per_worker * count)]
        for start in range(0, len(data), 500):
            queue.enqueue_many(data[start:start + 500])
        total += len(data)

    def done() -> bool:
        return sum(FinishedJobRegistry(q, connection=connection).count for q in app.groups) >= total
    wait_for(done, 600, f"{total} jobs to finish", interval=0.05)


def one_run(app: App, mode: str, redis_url: str, tmp: Path) -> dict:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    with pool(app, mode, redis_url, tmp) as (process, socket_path, launched):
        wait_for(lambda: len(Worker.all(connection=connection)) == app.workers, 300,
                   f"{app.workers} {app.name} workers to register ({mode})", interval=0.05)
        ready = time.monotonic() - launched
        time.sleep(2)  # idle, past start-up
        idle = footprint(process.pid, request(socket_path, {"command": "status"}))
        run_jobs(connection, app, JOBS_PER_WORKER)
        time.sleep(1)
        after = footprint(process.pid, request(socket_path, {"command": "status"}))
    return {"ready_seconds": ready, "idle": idle, "after_jobs": after}


def auto_count(app: App, mode: str, redis_url: str, tmp: Path, limit_mb: int) -> dict:
    with memory_cgroup(limit_mb) as group:
        with pool(app, mode, redis_url, tmp, cgroup=group, auto=True) as (_process, socket_path, _launched):
            running = settle(socket_path, quiet_seconds=6, timeout=300)
        peak, oom_kills = peak_and_oom_kills(group)
    return {"chosen": len(running), "peak_mib": round(peak / MIB), "oom_kills": oom_kills}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(runs: list[dict]) -> dict:
    def per_worker(phase: str) -> float:
        return median([statistics.mean(r[phase]["workers"]) for r in runs])
    return {
        "idle_mib": per_worker("idle") / MIB,
        "after_jobs_mib": per_worker("after_jobs") / MIB,
        "template_mib": median([r["idle"]["template"] for r in runs]) / MIB,
        "manager_mib": median([r["idle"]["manager"] for r in runs]) / MIB,
        "monitor_mib": median([r["idle"]["monitor"] for r in runs]) / MIB,
        "ready_seconds": median([r["ready_seconds"] for r in runs]),
        "ready_range": (min(r["ready_seconds"] for r in runs), max(r["ready_seconds"] for r in runs)),
    }


def table(results: dict, limit_mb: int) -> str:
    lines = [
        f"| app | mode | PSS per idle worker | after {JOBS_PER_WORKER} jobs each | template | manager | monitor | "
        f"N workers ready | `auto` in {limit_mb} MB (peak, OOM kills) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_mode in results.items():
        for mode in MODES:
            r, auto = by_mode[mode]["summary"], by_mode[mode]["auto"]
            low, high = r["ready_range"]
            lines.append(
                f"| {name} ({by_mode['workers']} workers) | {mode} | {r['idle_mib']:.1f} MiB | "
                f"{r['after_jobs_mib']:.1f} MiB | {r['template_mib']:.1f} MiB | {r['manager_mib']:.1f} MiB | "
                f"{r['monitor_mib']:.1f} MiB | "
                f"{r['ready_seconds']:.2f} s ({low:.2f}-{high:.2f}) | {auto['chosen']} ({auto['peak_mib']} MiB, "
                f"{auto['oom_kills']}) |")
        exec_, pre = by_mode["exec"], by_mode["preload"]
        lines.append(
            f"| {name} | preload / exec | {pre['summary']['idle_mib'] / exec_['summary']['idle_mib']:.0%} | "
            f"{pre['summary']['after_jobs_mib'] / exec_['summary']['after_jobs_mib']:.0%} | | | | "
            f"{exec_['summary']['ready_seconds'] / pre['summary']['ready_seconds']:.1f}x sooner | "
            f"{pre['auto']['chosen'] / max(1, exec_['auto']['chosen']):.1f}x the workers |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="heavy app workers (default 8)")
    parser.add_argument("--limit-mb", type=int, default=512)
    parser.add_argument("--only", help="one app: example or heavy")
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    chosen = [a for a in apps(args.workers) if args.only in (None, a.name)]
    if any(a.name == "heavy" for a in chosen) and not args.no_install:
        install_heavy_stack()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="entrypoint-preload-") as tmp:
        redis_process, redis_url = start_redis(Path(tmp))
        try:
            for app in chosen:
                runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
                for _ in range(args.runs):
                    for mode in MODES:  # in alternation, so drift hits both
                        runs[mode].append(one_run(app, mode, redis_url, Path(tmp)))
                results[app.name] = {"workers": app.workers, **{
                    mode: {"runs": runs[mode], "summary": summarize(runs[mode]),
                           "auto": auto_count(app, mode, redis_url, Path(tmp), args.limit_mb)}
                    for mode in MODES}}
        finally:
            stop_redis(redis_process)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "preload.json").write_text(json.dumps(results, indent=1))
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of {args.runs} runs\n")
    print(table(results, args.limit_mb))


if __name__ == "__main__":
    main()

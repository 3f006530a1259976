"""The pool manager's own memory (VmRSS, VmHWM) with every helper on, installed as the Dockerfile installs it.

    .venv/bin/python benchmarks/manager_memory.py [--pythons PATH ...] [--runs 3] [--settle 10]

For each CPython (default: the newest 3.11.x and 3.12.x under ~/.pyenv/versions) it makes a fresh
venv and installs the project into it as the image does: a regular, not editable,
`pip install "<src>[rq,metrics]"` of a copy of pyproject.toml, README.md and entrypoint/ (an
editable install adds an import finder that loads pathlib and more at start-up, and a build in
the repository would write build/ and *.egg-info there). It then runs that venv's `entrypoint`
against a private redis-server, with the metrics port set and POOL_CONFIG below (preload, two
elastic groups and a `'*'` group), from a working directory holding a copy of example/ (as /app
in the image), so the template, the monitor and the RQ workers (`python -m ...`) import the
installed entrypoint, not the repo's.
Once the 3 RQ workers are registered it waits --settle seconds and reads the manager's VmRSS and
VmHWM from /proc/PID/status and its children (helpers and workers). The floor beside it: a bare
`python -I -S` of the same venv. Goal: the manager under 15 MB (15e6 bytes, 14.3 MiB).
Medians of --runs (min-max); a markdown table on stdout, JSON in benchmarks/results/manager_memory.json.
Needs redis-server, and pip access to the project's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import MARK_VARIABLE, BenchError, children, status_kb, terminate, wait_for  # noqa: E402
from redis import Redis  # noqa: E402
from redis_fixture import free_port, start_redis, stop_redis  # noqa: E402
from rq import Worker  # noqa: E402

MIB = 1024 * 1024
GOAL_BYTES = 15e6  # "under 15 MB"
WORKERS = 3  # the minimum of each group: 1 + 1 + 1
POOL_CONFIG = """\
send_welcome_email: {count: elastic, min: 1, max: 4}
crunch_data: {count: elastic, min: 1, max: 8}
'*': 1
pool:
  preload: [example.jobs]
  elastic: 8
"""
# What the Dockerfile copies to /src before `pip install "/src[rq,metrics]"`.
SOURCES = ("pyproject.toml", "README.md", "entrypoint")
BARE = "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmRSS:')))"


class PoolFailed(Exception):
    """The pool died or its workers never registered: the log says why."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


def default_pythons() -> list[Path]:
    """The newest patch release of 3.11 and of 3.12 that pyenv has."""
    versions = Path.home() / ".pyenv" / "versions"
    found = []
    for minor in (11, 12):
        best: tuple[int, Path] | None = None
        for candidate in versions.glob(f"3.{minor}.*/bin/python"):
            match = re.fullmatch(rf"3\.{minor}\.(\d+)", candidate.parent.parent.name)
            if match and (best is None or int(match[1]) > best[0]):
                best = (int(match[1]), candidate)
        if best is not None:
            found.append(best[1])
    return found


def run(argv: list[str], **kwargs) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout.strip()


def make_venv(python: Path, directory: Path) -> Path:
    """A fresh venv with the project installed the Dockerfile's way; its bin/."""
    source = directory / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    venv = directory / "venv"
    run([str(python), "-m", "venv", str(venv)])
    try:
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{source}[rq,metrics]"])
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"pip install failed for {python}:\n{error.stdout}\n{error.stderr}") from error
    return venv / "bin"


def app_directory(directory: Path) -> Path:
    """The image's /app: the example app only (a copy, so its bytecode is written here, not in the repo)."""
    app = directory / "app"
    app.mkdir()
    shutil.copytree(ROOT / "example", app / "example", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (app / "pool.yml").write_text(POOL_CONFIG)
    return app


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    return []


def marked(mark: str) -> list[int]:
    """Every process whose environment carries our mark: what this benchmark started and left running."""
    needle = f"{MARK_VARIABLE}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as f:
            if needle in f.read().split(b"\0"):
                found.append(int(entry))
    return found


def describe(pid: int, worker_pids: set[int]) -> str:
    """A child's role: an RQ worker, or the helper's module (entrypoint.template, entrypoint.monitor...)."""
    if pid in worker_pids:
        return "worker"
    argv = cmdline(pid)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].removeprefix("entrypoint.")
    return Path(argv[0]).name if argv else "?"


def one_run(bin_dir: Path, app: Path, redis_url: str, settle: float, log_path: Path, mark: str) -> dict:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "PYTHONPATH": str(app),
           # as the image sets them (Dockerfile ENV)
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", MARK_VARIABLE: mark}
    argv = [str(bin_dir / "entrypoint"), "--config", str(app / "pool.yml"), "--socket", str(app.parent / "pool.sock")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=app, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for(lambda: len(Worker.all(connection=connection)) >= WORKERS, 60,
                     f"{WORKERS} RQ workers to register", interval=0.1, alive=process)
        except BenchError as error:
            raise PoolFailed(str(error), log_path) from error
        time.sleep(settle)
        if process.poll() is not None:
            raise PoolFailed(f"the pool exited {process.returncode} while settling", log_path)
        pid = process.pid
        if not any("entrypoint" in part for part in cmdline(pid)):
            raise PoolFailed(f"pid {pid} is not the manager: {cmdline(pid)}", log_path)
        status = status_kb(pid)
        kids = children(pid)
        worker_pids = {worker.pid for worker in Worker.all(connection=connection)}
        roles = sorted(describe(kid, worker_pids) for kid in kids)
        result = {"rss_kb": status["VmRSS"], "hwm_kb": status["VmHWM"], "children": len(kids), "roles": roles,
                  "workers_registered": len(worker_pids)}
    finally:
        terminate(process, 30)
    # A measurement of a pool that logged a traceback (start-up or stop) is suspect: say so.
    text = log_path.read_text(errors="replace")
    result["log_tracebacks"] = text.count("Traceback (most recent call last)")
    result["exit_code"] = process.returncode
    if result["log_tracebacks"]:
        print(f"--- {log_path.name}: {result['log_tracebacks']} traceback(s) ---\n{text}", file=sys.stderr)
    return result


def bare_kb(bin_dir: Path) -> int:
    return int(run([str(bin_dir / "python"), "-I", "-S", "-c", BARE]))


def measure(python: Path, directory: Path, redis_url: str, args: argparse.Namespace, mark: str) -> dict:
    directory.mkdir()
    bin_dir = make_venv(python, directory)
    version = run([str(bin_dir / "python"), "-c", "import sys; print(sys.version.split()[0])"])
    app = app_directory(directory)
    runs = []
    bare = []
    for index in range(args.runs):
        runs.append(one_run(bin_dir, app, redis_url, args.settle, directory / f"pool-{index}.log", mark))
        bare.append(bare_kb(bin_dir))
    rss = [r["rss_kb"] * 1024 / MIB for r in runs]
    return {
        "python": str(python), "version": version, "runs": runs, "bare_kb": bare,
        "rss_mib": {"median": statistics.median(rss), "min": min(rss), "max": max(rss)},
        "hwm_mib_median": statistics.median(r["hwm_kb"] * 1024 / MIB for r in runs),
        "bare_mib_median": statistics.median(bare) * 1024 / MIB,
        "goal_met": statistics.median(rss) * MIB < GOAL_BYTES,
    }


def children_cell(result: dict) -> str:
    roles = result["runs"][-1]["roles"]
    counts = {role: roles.count(role) for role in dict.fromkeys(roles)}
    kinds = ", ".join(f"{n} {role}" if n > 1 else role for role, n in counts.items())
    numbers = sorted({r["children"] for r in result["runs"]})
    return f"{'/'.join(map(str, numbers))} ({kinds})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", nargs="+", type=Path, default=None,
                        help="interpreters to measure (default: newest ~/.pyenv 3.11.x and 3.12.x)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait once every worker is registered, before reading")
    args = parser.parse_args()
    pythons = args.pythons or default_pythons()
    if not pythons:
        parser.error("no --pythons given and none found under ~/.pyenv/versions")
    mark = uuid.uuid4().hex
    results = []
    with tempfile.TemporaryDirectory(prefix="entrypoint-manager-memory-") as work:
        redis_process, redis_url = start_redis(Path(work))
        try:
            for number, python in enumerate(pythons):
                print(f"{python}: venv, install, {args.runs} run(s)...", file=sys.stderr, flush=True)
                results.append(measure(python, Path(work) / f"python-{number}", redis_url, args, mark))
        except PoolFailed as failure:
            print(f"the pool failed: {failure}\n--- {failure.log} ---", file=sys.stderr)
            print(failure.log.read_text(errors="replace"), file=sys.stderr)
            return 1
        finally:
            stop_redis(redis_process)
            for pid in marked(mark):  # a helper or worker that outlived its manager
                print(f"left running, killed: {pid} {cmdline(pid)}", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "manager_memory.json").write_text(json.dumps(
        {"settle_s": args.settle, "runs": args.runs, "goal_bytes": GOAL_BYTES, "results": results}, indent=1))
    print(f"The manager with preload, elastic groups, the monitor and metrics on; {WORKERS} idle RQ workers, "
          f"read {args.settle:g} s after they registered. Medians of {args.runs} run(s) (min-max).\n")
    print("| python | manager RSS MiB | peak (VmHWM) MiB | helpers and workers (children) | bare interpreter MiB "
          "| under 15 MB (14.3 MiB) |")
    print("|---|---|---|---|---|---|")
    for result in results:
        rss = result["rss_mib"]
        print(f"| {result['version']} | {rss['median']:.1f} ({rss['min']:.1f}-{rss['max']:.1f}) "
              f"| {result['hwm_mib_median']:.1f} | {children_cell(result)} | {result['bare_mib_median']:.1f} "
              f"| {'yes' if result['goal_met'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark entrypoint against tini, dumb-init, catatonit, supervisord and honcho.

    python3 benchmarks/run.py            # everything, full sizes (< 5 minutes on 2 cores)
    python3 benchmarks/run.py --quick    # small sizes, same shape
    python3 benchmarks/run.py --only signals,pool --runs 7

Installs missing peers first (apt-get: tini dumb-init catatonit; pip: supervisor honcho) unless
--no-install. Our init and pool run from a clean venv built from this checkout (--no-venv: from
the source tree with this interpreter). Every figure is the median of the runs with min and
max; contenders are measured in alternation (A, B, C, A, B, C...) so machine drift hits all.
Writes benchmarks/results/latest.json and a dated copy, and (full sizes, all benchmarks)
benchmarks/RESULTS.md. Everything started is killed in the end: each contender runs in its own
session, most as PID 1 of a PID namespace that dies with it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import bench_init
import bench_pool
import report
import summary
from harness import HERE, MARK_VARIABLE, PROBES, ROOT, Contender, clean_env

BENCHMARKS = ("startup", "memory", "reaping", "signals", "pool")
APT_PEERS = ("tini", "dumb-init", "catatonit")
PIP_PEERS = {"supervisord": "supervisor", "honcho": "honcho"}  # executable -> PyPI package


@dataclass(frozen=True)
class Sizes:
    name: str
    startup_factor: int  # start-up launches are cheap: this many times --runs rounds
    orphans: int
    signals: int
    workers: int
    idle: float
    settle: float


SIZES = {
    "full": Sizes("full", 4, 5000, 1000, 100, 10.0, 1.0),
    "quick": Sizes("quick", 2, 1000, 200, 20, 2.0, 0.5),
    "tiny": Sizes("tiny", 1, 100, 20, 5, 0.3, 0.2),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (same as --sizes quick)")
    parser.add_argument("--sizes", choices=sorted(SIZES), help="full (default), quick or tiny")
    parser.add_argument("--runs", type=int, default=5, help="rounds per benchmark (default 5)")
    parser.add_argument("--only", help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get/pip install missing peers: skip them")
    parser.add_argument("--no-venv", action="store_true",
                        help="run entrypoint from the source tree with this interpreter "
                        "(site-packages .pth files included) instead of a clean venv")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where latest.json and the dated copy go (default benchmarks/results)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="write the markdown summary here (default: benchmarks/RESULTS.md "
                        "after a full run of every benchmark)")
    parser.add_argument("--no-summary", action="store_true", help="never write the summary")
    args = parser.parse_args(argv)
    args.sizes = SIZES[args.sizes or ("quick" if args.quick else "full")]
    args.only = [b.strip() for b in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


# -- the machine and the peers ------------------------------------------------------------------


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    distro = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
        "python_executable": sys.executable,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_peers(install: bool) -> list[str]:
    """Install what is missing (unless told not to); returns what is still missing."""
    actions = []
    missing_apt = [name for name in APT_PEERS if not shutil.which(name)]
    if missing_apt and install:
        log(f"installing {', '.join(missing_apt)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", *missing_apt], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        actions.append("apt-get install -y " + " ".join(missing_apt))
    missing_pip = [pkg for exe, pkg in PIP_PEERS.items() if _python_script(exe) is None
                   or importlib.util.find_spec(pkg) is None]
    if missing_pip and install:
        log(f"installing {', '.join(missing_pip)} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing_pip], check=False)
        actions.append("pip install " + " ".join(missing_pip))
    still = [name for name in APT_PEERS if not shutil.which(name)]
    still += [exe for exe in PIP_PEERS if _python_script(exe) is None]
    for action in actions:
        log(f"  done: {action}")
    return still


def _python_script(name: str) -> str | None:
    """This interpreter's own console script (not a pyenv shim, which would add a bash)."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def build_venv(workdir: Path) -> Path:
    """A venv with no pip, no setuptools and no .pth file: entrypoint (--no-deps) plus the
    dependencies pyproject.toml lists, and supervisor and honcho, so every Python program in
    the comparison starts under the same clean conditions. Built from a copy of the checkout,
    so no build/ or egg-info lands in it."""
    source = workdir / "src"
    source.mkdir()
    shutil.copytree(ROOT / "entrypoint", source / "entrypoint",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q",
           "--disable-pip-version-check"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "check": False}
    result = subprocess.run([*pip, str(source), *PIP_PEERS.values()], **quiet)
    if result.returncode != 0:
        raise RuntimeError(f"pip install of {ROOT} and the peers failed: {result.stderr.decode()[-800:]}")
    return venv


def version(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (result.stdout or result.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "?"


# -- running ------------------------------------------------------------------------------------


def _stop_on_term(signum, _frame) -> None:
    """TERM (or HUP) ends the run like Ctrl-C: every `finally` kills what it started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_term)
    signal.signal(signal.SIGHUP, _stop_on_term)
    sizes = args.sizes
    began = time.monotonic()
    load_before = os.getloadavg()
    when = datetime.datetime.now(datetime.timezone.utc)
    missing = ensure_peers(install=not args.no_install)
    if missing:
        log(f"missing peers (skipped): {', '.join(missing)}")
    if args.runs < 5:
        log(f"note: --runs {args.runs}: figures below 5 runs are for smoke tests only")

    workdir = Path(tempfile.mkdtemp(prefix="entrypoint-bench-"))
    mark = os.environ.get(MARK_VARIABLE) or uuid.uuid4().hex
    python = sys.executable
    try:
        extra_env = {}
        venv = None
        if not args.no_venv:
            log("building a clean venv for entrypoint, supervisord and honcho")
            try:
                venv = build_venv(workdir)
            except (RuntimeError, subprocess.CalledProcessError) as error:
                log(f"  could not build the venv ({error}); using the source tree")
        if venv is not None:
            entrypoint = [str(venv / "bin" / "entrypoint")]
            ours_python = str(venv / "bin" / "python")
            profile_argv = [str(venv / "bin" / "python"), "-X", "importtime",
                            str(venv / "bin" / "entrypoint")]
            scripts = {exe: str(venv / "bin" / exe) for exe in PIP_PEERS}
            pth_files = sorted(p.name for p in venv.glob("lib/python*/site-packages/*.pth"))
            where = "a clean venv (python -m venv --without-pip; pip install --no-deps .)"
        else:
            entrypoint = [python, "-m", "entrypoint"]
            ours_python = python
            profile_argv = [python, "-X", "importtime", "-m", "entrypoint"]
            extra_env["PYTHONPATH"] = str(ROOT)
            scripts = {exe: _python_script(exe) for exe in PIP_PEERS}
            pth_files = sorted(p.name for p in Path(sysconfig.get_path("purelib")).glob("*.pth"))
            where = f"the source tree with {python} (site-packages .pth files included)"
        env = clean_env(mark, extra_env)

        inits = [Contender("entrypoint", "ours", [*entrypoint, "--"], note=f"from {where}")]
        if shutil.which("tini"):
            inits.append(Contender("tini", "peer", [shutil.which("tini"), "-s", "--"],
                                   argv_pid1=[shutil.which("tini"), "--"],
                                   note="-s (subreaper) when not PID 1, as entrypoint and "
                                   "catatonit do by themselves"))
        if shutil.which("dumb-init"):
            inits.append(Contender("dumb-init", "peer", [shutil.which("dumb-init")]))
        if shutil.which("catatonit"):
            inits.append(Contender("catatonit", "peer", [shutil.which("catatonit"), "--"]))
        floor = Contender("python floor", "floor",
                          [python, "-I", "-S", str(PROBES / "min_init.py")],
                          note="probes/min_init.py under python -I -S: block signals, "
                          "posix_spawn, sigwaitinfo loop - the least a Python init can do")
        none = Contender("none", "floor", [], note="the child alone, no init")

        managers: list[bench_pool.Manager] = [
            bench_pool.entrypoint_pool("entrypoint", entrypoint, sizes.workers,
                                       note=f"default settings; from {where}"),
            bench_pool.entrypoint_pool(
                "entrypoint (backoff_reset 1s)", entrypoint, sizes.workers, backoff_reset=1,
                note="a worker that lived 1 s counts as started, as supervisord's startsecs=1"),
        ]
        pool_rows = [bench_pool.entrypoint_pool(f"entrypoint pool ({count} workers)", entrypoint, count,
                                                note=f"the pool manager; from {where}")
                     for count in sorted({2, sizes.workers})]
        if scripts.get("supervisord"):
            managers.append(bench_pool.supervisord(scripts["supervisord"], sizes.workers))
        if scripts.get("honcho"):
            managers.append(bench_pool.honcho(scripts["honcho"], sizes.workers))

        versions = {
            "entrypoint": version([*entrypoint, "--version"]),
            **{c.name: version([c.argv[0], "--version" if c.name != "catatonit" else "-V"])
               for c in inits[1:]},
            **{exe: version([path, "--version"]) for exe, path in scripts.items() if path},
            "unshare": version(["unshare", "--version"]),
        }

        results: dict = {"benchmarks": {}}
        failed = False
        runs = args.runs
        plan = {
            "startup": lambda: [bench_init.startup([*inits, floor, none],
                                                   runs * sizes.startup_factor, env)],
            "memory": lambda: [bench_init.memory([*inits, floor], pool_rows, runs, env, workdir / "memory")],
            "reaping": lambda: [bench_init.reaping([*inits, floor], runs, sizes.orphans, env,
                                                   python)],
            "signals": lambda: [bench_init.signals([*inits, floor, none], runs, sizes.signals,
                                                   env, python)],
            "pool": lambda: bench_pool.pool(managers, runs, sizes.workers, sizes.idle,
                                            sizes.settle, env, workdir / "pool"),
        }
        for name in BENCHMARKS:
            if name not in args.only:
                continue
            log(f"{name}...")
            started = time.monotonic()
            try:
                for bench in plan[name]():
                    results["benchmarks"][bench.name] = bench.to_json()
            except Exception as error:  # one broken benchmark must not lose the others
                failed = True
                traceback.print_exc()
                results["benchmarks"][name] = {"title": name, "error": repr(error)}
            log(f"  {time.monotonic() - started:.1f} s")
            time.sleep(0.2 if sizes.name == "tiny" else 2.0)  # let the last teardown settle
        profiles = {
            "startup": lambda: {"import_profile": bench_init.import_profile(profile_argv, env)},
            "signals": lambda: {"cprofile": bench_init.signal_profile(
                ours_python, env, sizes.signals, python, workdir)},
            "pool_start": lambda: {"import_profile": bench_init.pool_import_profile(
                profile_argv, env, workdir)},
        }
        for name, take in profiles.items():  # where our time goes, beside the figures
            if "error" not in results["benchmarks"].get(name, {"error": "not run"}):
                try:
                    results["benchmarks"][name]["extra"] = {
                        **results["benchmarks"][name].get("extra", {}), **take()}
                except Exception:
                    failed = True
                    traceback.print_exc()

        results["meta"] = {
            "date": when.isoformat(timespec="seconds"),
            "command": " ".join(["python3", "benchmarks/run.py", *(argv or sys.argv[1:])]),
            "machine": machine(),
            "sizes": vars(sizes),
            "runs": runs,
            "startup_rounds": runs * sizes.startup_factor,
            "ours": "entrypoint",
            "entrypoint_from": where,
            "venv_pth_files" if venv else "site_pth_files": pth_files,
            "versions": versions,
            "missing_peers": missing,
            "duration_s": time.monotonic() - began,
            "loadavg_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    args.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    (args.results / "latest.json").write_text(text)
    (args.results / f"{when.strftime('%Y-%m-%dT%H%M%SZ')}.json").write_text(text)
    report.print_tables(results)
    target = args.summary
    if target is None and sizes.name == "full" and args.only == list(BENCHMARKS):
        target = HERE / "RESULTS.md"
    if target is not None and not args.no_summary:
        target.write_text(summary.markdown(results))
        log(f"wrote {target}")
    log(f"wrote {args.results / 'latest.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

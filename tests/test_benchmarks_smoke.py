"""The benchmark runner must not rot: a tiny run of every benchmark, its JSON, nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import installed_tool, marked_processes

ROOT = Path(__file__).resolve().parent.parent
MARK = "ENTRYPOINT_BENCH_MARK"  # benchmarks/harness.py gives it to every process it starts
BENCHMARKS = {"startup", "memory", "reaping", "signals", "pool_start", "pool_idle", "restart"}


# Every peer the benchmarks measure against: the inits (and unshare) come from scripts/test's
# Debian list, the pool managers from the test extra.
INIT_PEERS = ("tini", "dumb-init", "catatonit")
POOL_PEERS = ("supervisord", "honcho")
# Only to catch a hang: the tiny run with every peer takes about 20 s on a busy 2-core machine.
HANG = 90


@pytest.mark.timeout(HANG + 30)
def test_tiny_run_of_every_benchmark_writes_its_json_and_leaves_nothing(tmp_path: Path) -> None:
    for name in (*INIT_PEERS, "unshare"):
        installed_tool(name, "scripts/test installs it from Debian")
    for name in POOL_PEERS:
        installed_tool(name, "the test extra installs it (pip install -e '.[test]', as scripts/test does)")
    if os.geteuid() != 0:
        # Said, not hidden: the benchmarks start each init as PID 1 of a new PID namespace (unshare
        # --pid), which only root may do; the whole suite runs as root where it counts (CI).
        pytest.skip("the benchmarks run contenders as PID 1 of PID namespaces: needs root")
    mark = uuid.uuid4().hex
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--sizes", "tiny",
               "--runs", "1", "--no-install", "--no-venv", "--no-summary",
               "--results", str(tmp_path)]
    process = subprocess.Popen(command, env={**os.environ, MARK: mark}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        process.terminate()  # the runner's finally blocks kill what it started
        try:
            _out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _out, err = process.communicate()
        pytest.fail(f"benchmarks/run.py --sizes tiny took more than {HANG} s:\n{err[-2000:]}")
    finally:
        leftovers = [p for p in marked_processes(mark, MARK) if p[1] != "Z"]
        for pid, _state in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left running: {leftovers}"
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
    assert "Start-up" in out

    results = json.loads((tmp_path / "latest.json").read_text())
    assert {"date", "machine", "runs", "sizes", "versions", "duration_s"} <= set(results["meta"])
    assert {"nproc", "cpu_model", "kernel", "python"} <= set(results["meta"]["machine"])
    assert set(results["benchmarks"]) == BENCHMARKS
    for name, bench in results["benchmarks"].items():
        assert "error" not in bench, name
        assert {"title", "metrics", "contenders", "ratios"} <= set(bench), name
        ours = bench["contenders"]["entrypoint"]["metrics"]
        for metric, summary in ours.items():
            assert isinstance(summary, dict), f"{name}/{metric}: entrypoint not measured"
            assert {"median", "min", "max", "n"} <= set(summary)
        peers = {c for c, v in bench["contenders"].items() if v["kind"] == "peer"}
        assert peers == set(POOL_PEERS if name.startswith(("pool", "restart")) else INIT_PEERS), name
        for metric in bench["metrics"]:
            assert set(bench["ratios"][metric["key"]]) == set(bench["contenders"])
    dated = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(dated) == 1

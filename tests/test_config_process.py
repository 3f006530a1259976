"""The running pool reads its config in a child: PID 1 never imports PyYAML, python-dotenv, rich, redis or rq."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, children_of, wait_for

from entrypoint.control import request

# Imported by PID 1, any of these would stay there for the pool's whole life.
HEAVY = ("yaml", "_yaml", "dotenv", "rich", "redis", "rq")
# Standard modules PID 1 does without, and what each would add to it (Python 3.11).
SPARED = {"argparse": "0.8 MB with gettext and locale", "dataclasses": "1.3 MB with inspect, ast and dis",
          "shutil": "0.6 MB with bz2, lzma and zlib", "pickle": "0.4 MB"}
POOL_FILE = "steady:\n  count: ${STEADY_COUNT}\n  command: sleep 1000\n"


class RunningPool:
    def __init__(self, runner: Runner, tmp_path: Path, **env: str) -> None:
        self.socket = str(tmp_path / "pool.sock")
        # -v shows debug lines: a reaped orphan would be logged
        self.process = runner.start(["-v", "--socket", self.socket], env=runner.env(**env))

    def workers(self) -> dict[str, int]:
        """worker name -> pid, of the running ones."""
        try:
            rows = request(self.socket, {"command": "status"})["workers"]
        except OSError:
            return {}
        return {f"{r['group']}.{r['slot']}": r["pid"] for r in rows if r["state"] == "running"}

    def wait_workers(self, names: set[str]) -> dict[str, int]:
        return wait_for(lambda: (found := self.workers()) and set(found) == names and found, 15,
                        f"workers {sorted(names)}")

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the pool did not stop within 20s")
        assert self.process.returncode == 0, out + err
        return out + err


def environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def test_the_manager_never_imports_yaml_dotenv_rich_redis_or_rq_nor_argparse(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STEADY_COUNT=2\nFROM_DOTENV=yes\n")
    (tmp_path / "pool.yml").write_text(POOL_FILE)
    pool = RunningPool(runner, tmp_path)
    workers = pool.wait_workers({"steady.1", "steady.2"})  # the file's ${STEADY_COUNT}, from .env
    assert environ_of(workers["steady.1"])["FROM_DOTENV"] == "yes"  # .env reached PID 1's environment
    (tmp_path / "pool.yml").write_text(POOL_FILE + "more:\n  count: 1\n  command: sleep 1000\n")
    pool.reload()
    pool.wait_workers({"steady.1", "steady.2", "more.1"})
    modules = request(pool.socket, {"command": "modules"})["modules"]
    assert "entrypoint.supervisor" in modules, "asked the wrong process"
    assert [name for name in modules if name.split(".")[0] in HEAVY] == []
    assert {name: SPARED[name] for name in SPARED if name in modules} == {}
    pool.stop()


def test_reload_reads_in_a_child_that_is_never_taken_for_a_worker_or_an_orphan(
    runner: Runner, tmp_path: Path
) -> None:
    (tmp_path / "pool.yml").write_text(POOL_FILE)
    pool = RunningPool(runner, tmp_path, STEADY_COUNT="1")
    steady = pool.wait_workers({"steady.1"})["steady.1"]
    (tmp_path / "pool.yml").write_text(POOL_FILE + "more:\n  count: 1\n  command: sleep 1000\n")
    pool.reload()
    more = pool.wait_workers({"steady.1", "more.1"})["more.1"]
    (tmp_path / "pool.yml").write_text("steady: [not a count\n")
    pool.reload()
    reply = request(pool.socket, {"command": "reload"})  # a second one (two HUPs may arrive as one)
    assert "pool.yml:2: YAML syntax error" in reply["error"]
    # The readers are reaped as soon as they answer: only the workers stay the manager's children.
    wait_for(lambda: sorted(children_of(pool.process.pid)) == sorted([steady, more]), 10, "only workers")
    assert pool.workers() == {"steady.1": steady, "more.1": more}
    output = pool.stop()
    assert output.count("reload failed: the running pool is unchanged") == 2, output
    assert output.count("pool.yml:2: YAML syntax error") == 2, output
    assert "reaped orphan" not in output

"""Reliability: the running pool under kills, signal storms, reload storms, fork failure, a vanishing
worker command and a Redis restart; and hostile files, arguments and variables at the command line.

Every test here is marked `chaos`. The normal suite runs a bounded slice (an 8 s kill storm, small
example counts); `pytest -m chaos` runs the long version (a 20 s storm, more reloads and examples).
CHAOS_SECONDS sets the storm's length either way (above 8 counts as a long run), CHAOS_SEED the
seed of every random choice, and CHAOS_REPORT=PATH writes the run's figures as JSON (they are also
printed, visible with -s).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import rq
from conftest import (
    PROGRAMS,
    Runner,
    chaos_chosen,
    children_of,
    installed_tool,
    marked_processes,
    process_state,
    wait_for,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from redis_fixture import free_port, start_redis, stop_redis
from test_supervisor import WORKER, Pool, signals_to

pytestmark = pytest.mark.chaos

SLICE_SECONDS = 8.0
LONG_SECONDS = 20.0
KILL_RATE = 5.0  # SIGKILLs per second during the kill storm
# The pool: block of every chaos pool, so that the backoff bounds are testable in seconds.
BACKOFF_MIN, BACKOFF_MAX, BACKOFF_RESET = 0.2, 1.0, 2.0
BACKOFF = f"  backoff_min: {BACKOFF_MIN}\n  backoff_max: {BACKOFF_MAX}\n  backoff_reset: {BACKOFF_RESET}\n"
# On top of a backoff bound: python's start-up on a loaded 2-core machine, and our polling.
MARGIN = 2.0
FD_SLACK = 2
RSS_SLACK_KIB = 3 * 1024

FIGURES: dict[str, object] = {}
_FIGURES_LOCK = threading.Lock()


# --- parameters and the report -----------------------------------------------------------------


@dataclass(frozen=True)
class Chaos:
    seconds: float  # the kill storm's length
    seed: int

    @property
    def long(self) -> bool:
        return self.seconds > SLICE_SECONDS

    @property
    def signals(self) -> int:
        return 1000

    @property
    def reloads(self) -> int:
        return 200 if self.long else 50

    @property
    def examples(self) -> int:  # per subprocess-based property
        return 200 if self.long else 40

    @property
    def outage(self) -> float:  # how long Redis is down, or the worker command broken
        return 5.0 if self.long else 2.0

    def rng(self, tag: str) -> random.Random:
        return random.Random(f"{self.seed}:{tag}")


@pytest.fixture(scope="module")
def chaos(request: pytest.FixtureRequest) -> Chaos:
    given_seconds = os.environ.get("CHAOS_SECONDS")
    seconds = (float(given_seconds) if given_seconds
               else LONG_SECONDS if chaos_chosen(request.config) else SLICE_SECONDS)
    return Chaos(seconds=seconds, seed=int(os.environ.get("CHAOS_SEED") or 7))


@pytest.fixture(scope="module", autouse=True)
def chaos_report(chaos: Chaos) -> Iterator[None]:
    """The run's figures, for the README: printed at the end, and written to $CHAOS_REPORT."""
    FIGURES.clear()
    FIGURES.update(mode="chaos" if chaos.long else "slice", seed=chaos.seed,
                   zombies_left=0, processes_left=0, jobs_lost=0, inputs_tried=0)
    started = time.monotonic()
    yield
    FIGURES["run_seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(FIGURES, indent=2, sort_keys=True)
    print(f"\nchaos figures:\n{text}")
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(text + "\n")


def add(name: str, amount: int) -> None:
    with _FIGURES_LOCK:
        FIGURES[name] = int(FIGURES.get(name, 0)) + amount  # type: ignore[call-overload]


# --- /proc --------------------------------------------------------------------------------------


def zombie_children(pid: int) -> int:
    return sum(process_state(child) == "Z" for child in children_of(pid))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def rss_kib(pid: int) -> int:
    return int(status_field(pid, "VmRSS").split()[0])


def signals_pending(pid: int) -> bool:
    return int(status_field(pid, "SigPnd"), 16) != 0 or int(status_field(pid, "ShdPnd"), 16) != 0


# --- the pool -----------------------------------------------------------------------------------


class ChaosPool(Pool):
    """test_supervisor's Pool, with a choice of worker command (None: the default RQ worker), and
    its output read as it comes: a storm logs more than a pipe holds, and a manager blocked on a
    full pipe would look hung."""

    def __init__(self, runner: Runner, tmp_path: Path, config: str, *args: str,
                 command: list[str] | None = WORKER, **kwargs) -> None:
        self.command = command
        super().__init__(runner, tmp_path, config, *args, **kwargs)
        self.lines: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                        for stream in (self.process.stdout, self.process.stderr)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self.lines.append(line)

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pool did not exit within {timeout}s")
        for reader in self.readers:
            reader.join(5)
        return self.process.returncode, "".join(self.lines)

    def write_config(self, text: str) -> None:
        if self.config.is_dir():
            self.config.rmdir()
        block = "pool:\n" if self.command is None else f"pool:\n  command: {json.dumps(self.command)}\n"
        self.config.write_text(text + block + "  term_timeout: 3\n" + self.settings)

    def said(self, words: str) -> int:
        """How many lines of output so far hold `words`."""
        return sum(words in line for line in list(self.lines))

    def rows(self) -> list[dict]:
        return self.status()["workers"]

    def live(self) -> dict[str, int]:
        """worker name -> pid of every worker the manager counts as running (started or not)."""
        return {f"{w['group']}.{w['slot']}": w["pid"] for w in self.rows() if w["state"] == "running"}

    def alive(self) -> bool:
        return self.process.poll() is None and process_state(self.pid) not in (None, "Z")

    def stop(self, runner: Runner) -> tuple[int, str]:
        """TERM, wait, and count what is left of this test's processes."""
        self.kill(signal.SIGTERM)
        code, output = self.finish()
        left = marked_processes(runner.mark)
        add("zombies_left", sum(state == "Z" for _, state in left))
        add("processes_left", sum(state != "Z" for _, state in left))
        assert not left, f"left behind: {left}"
        return code, output


def started_in(pool: Pool, names: set[str]) -> dict[str, int] | None:
    """The running workers if they are exactly `names`, all started and none stopping."""
    try:
        rows = pool.status()["workers"]
    except OSError:
        return None
    started = {r["pid"] for r in pool.events("start")}
    running = {f"{w['group']}.{w['slot']}": w["pid"] for w in rows
               if w["state"] == "running" and w["pid"] in started}
    return running if set(running) == names and len(rows) == len(names) else None


def manager_traceback(output: str) -> bool:
    """A traceback through the manager's own code (a worker's traceback is the worker's business)."""
    return re.search(r'File "[^"]*/entrypoint/[^"]*\.py"', output) is not None


def names(**counts: int) -> set[str]:
    return {f"{group}.{slot}" for group, count in counts.items() for slot in range(1, count + 1)}


# --- 1. kill -9 storm ---------------------------------------------------------------------------


def test_kill_storm_pool_recovers_within_backoff_no_zombies_flat_fds_and_rss(runner, tmp_path, chaos):
    slots = 6
    pool = ChaosPool(runner, tmp_path, f"q: {slots}\n", settings=BACKOFF)
    first = pool.wait_running(slots)
    # Warm-up: one kill and its replacement, so every code path has run before we measure.
    os.kill(first["q.1"], signal.SIGKILL)
    wait_for(lambda: (r := pool.running()) and len(r) == slots and r["q.1"] != first["q.1"], 10, "warm-up")
    time.sleep(0.3)
    fds_before, rss_before = open_fds(pool.pid), rss_kib(pool.pid)

    rng = chaos.rng("kill storm")
    count = int(chaos.seconds * KILL_RATE)
    start = time.monotonic()
    moments = sorted(start + rng.uniform(0, chaos.seconds) for _ in range(count))
    kills: list[tuple[float, str, int]] = []  # (wall time, worker name, pid)
    most_zombies = 0
    for moment in moments:
        while time.monotonic() < moment:
            most_zombies = max(most_zombies, zombie_children(pool.pid))
            time.sleep(min(0.02, max(0.0, moment - time.monotonic())))
        victims = [w for w in pool.rows() if w["state"] == "running" and w["pid"]]
        if not victims:
            continue  # every slot is backing off: nothing to kill at this moment
        victim = rng.choice(victims)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGKILL)
            kills.append((time.time(), f"{victim['group']}.{victim['slot']}", victim["pid"]))
        most_zombies = max(most_zombies, zombie_children(pool.pid))
    storm_end = time.monotonic()

    assert pool.alive(), "the manager died in the storm"
    restored = pool.wait_running(slots, timeout=BACKOFF_MAX + MARGIN + 3)
    recovery = time.monotonic() - storm_end
    assert recovery <= BACKOFF_MAX + MARGIN, f"size restored {recovery:.1f}s after the storm"
    assert set(restored) == names(q=slots)

    # Each killed slot had a new worker within the backoff bound: a start logged by the worker,
    # or (when that one was killed before it could log) the pid of the next victim in the slot.
    starts = [(r["time"], r["worker"]) for r in pool.events("start")]
    late = []
    for when, name, pid in kills:
        evidence = [t for t, n in starts if n == name and t > when]
        evidence += [t for t, n, p in kills if n == name and t > when and p != pid]
        gap = min(evidence, default=float("inf")) - when
        if gap > BACKOFF_MAX + MARGIN:
            late.append((name, round(gap, 2)))
    assert not late, f"slots that stayed empty longer than the backoff bound: {late}"

    assert most_zombies <= slots, f"{most_zombies} unreaped children at once"
    zombies_now = zombie_children(pool.pid)
    time.sleep(0.3)
    fds_after, rss_after = open_fds(pool.pid), rss_kib(pool.pid)
    FIGURES.update(kills_survived=len(kills), kill_moments=count, kill_storm_seconds=chaos.seconds,
                   kill_rate=KILL_RATE, pool_size=slots,
                   most_zombies_seen=most_zombies, recovery_seconds=round(recovery, 2),
                   manager_fd_delta=fds_after - fds_before, manager_rss_delta_kib=rss_after - rss_before)
    assert zombies_now == 0
    assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)
    assert rss_after <= rss_before + RSS_SLACK_KIB, (rss_before, rss_after)
    code, output = pool.stop(runner)
    assert code == 0, output[-3000:]
    assert not manager_traceback(output), output[-5000:]


# --- 2. signal storm ----------------------------------------------------------------------------


def test_signal_storm_no_crash_and_a_final_hup_restores_the_file(runner, tmp_path, chaos):
    pool = ChaosPool(runner, tmp_path, "a: 3\nb: 2\n", settings=BACKOFF)
    pool.wait_running(5)
    rng = chaos.rng("signal storm")
    mix = [signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD, signal.SIGCONT]
    sent: Counter[str] = Counter()
    for _ in range(chaos.signals):
        signum = rng.choice(mix)
        pool.kill(signum)
        sent[signal.Signals(signum).name] += 1
    wait_for(lambda: not signals_pending(pool.pid), 10, "the manager to take every signal")
    time.sleep(0.3)
    assert pool.alive(), "the manager died in the storm"
    answer = runner.run(["--socket", pool.socket, "--status", "--json"])
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["manager_pid"] == pool.pid

    pool.kill(signal.SIGHUP)  # a reload makes the file the truth again: TTIN/TTOU scaling is undone
    wait_for(lambda: started_in(pool, names(a=3, b=2)), BACKOFF_MAX + MARGIN + 8, "the file's 3 + 2 workers")
    worker_signals = Counter(r["signum"] for r in pool.events("signal"))
    FIGURES.update(signals_absorbed=sum(sent.values()), signal_mix=dict(sent),
                   signals_logged_by_workers={signal.Signals(s).name: n for s, n in worker_signals.items()})
    assert worker_signals[signal.SIGUSR1] > 0, "USR1 was not passed on to any worker"
    assert worker_signals[signal.SIGCONT] > 0, "CONT was not passed on to any worker"
    assert set(worker_signals) <= {signal.SIGUSR1, signal.SIGCONT, signal.SIGTERM}, worker_signals
    code, output = pool.stop(runner)
    assert code == 0, output[-3000:]
    assert not manager_traceback(output), output[-5000:]


# --- 3. reload storm ----------------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
# Each broken file, and what it is, for the message when one of them is not refused.
BROKEN: list[tuple[str, bytes | str | None]] = [
    ("yaml syntax", "keep: 2\nvary: [not, a, count\n"),
    ("count over the cap", "keep: 2\nvary: 1001\n"),
    ("negative count", "keep: 2\nvary: -1\n"),
    ("float count", "keep: 2\nvary: 1.5\n"),
    ("string count", "keep: 2\nvary: lots\n"),
    ("duplicate key", "keep: 2\nkeep: 2\n"),
    ("empty file", ""),
    ("binary", bytes(range(256))),
    ("alias bomb", ALIAS_BOMB),
    ("ERB", "keep: <%= ENV['WORKER_CONCURRENCY'] %>\n"),
    ("unset variable", "keep: ${CHAOS_UNSET_VARIABLE}\n"),
    ("unknown key", "keep: 2\nvary:\n  count: 1\n  colour: red\n"),
    ("bad quoting", "keep: 2\nvary:\n  count: 1\n  command: \"python 'unterminated\"\n"),
    ("missing file", None),
    ("a directory", "DIRECTORY"),
    ("pool is not a mapping", "keep: 2\npool: 5\n"),
    ("backoff_min > backoff_max", "keep: 2\npool:\n  backoff_min: 5\n  backoff_max: 1\n"),
    ("a list", "- keep\n- vary\n"),
    ("invalid UTF-8", b"keep: 2\nvary: \xff\xfe\n"),
    ("over 1 MiB", "keep: 2\n# " + "x" * (1 << 20) + "\n"),
]


def put(path: Path, content: bytes | str | None) -> None:
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if content == "DIRECTORY":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


def reloads_logged(pool: ChaosPool) -> tuple[int, int]:
    """(reloads done, reloads refused) as the manager's log tells."""
    return pool.said("entrypoint: reload: "), pool.said("reload failed: the running pool is unchanged")


def test_reload_storm_good_and_broken_files(runner, tmp_path, chaos):
    def good(round_: int, count: int) -> str:
        # `vary` changes its command (a round marker) and its count; `keep` never changes.
        return f"keep: 2\nvary:\n  count: {count}\n  command: {json.dumps([*WORKER, f'round-{round_}'])}\n"

    rng = chaos.rng("reload storm")
    config = tmp_path / "pool.yml"
    pool = ChaosPool(runner, tmp_path, good(0, 1), "--config", str(config), settings=BACKOFF)
    keep = {k: v for k, v in pool.wait_running(3).items() if k.startswith("keep.")}
    good_reloads = broken_reloads = 0
    last = (0, 1)
    moved = []
    for i in range(1, chaos.reloads + 1):
        if i % 2:
            last = (i, rng.randint(0, 3))
            pool.write_config(good(*last))
            good_reloads += 1
            what = f"good file {i}"
        else:
            what, content = BROKEN[(i // 2 - 1) % len(BROKEN)]
            put(config, content)
            broken_reloads += 1
        pool.kill(signal.SIGHUP)
        pool.status()  # answered only after the HUP has been read, so each file gets its own reload
        logged = (good_reloads, broken_reloads)
        wait_for(lambda logged=logged: reloads_logged(pool) == logged, 5,
                 f"the reload of {what} to be logged as {'done' if i % 2 else 'refused'}")
        now = {k: v for k, v in pool.live().items() if k.startswith("keep.")}
        if now != keep:
            moved.append((i, now))
        time.sleep(rng.uniform(0, 0.05))
    assert not moved, f"workers of the unchanged group `keep` were replaced: {moved[:5]}"
    assert all(signals_to(pool, pid) == [] for pid in keep.values()), "`keep` was signalled"
    assert pool.alive()

    # The last good file is the one that counts (the broken one after it changed nothing).
    round_, count = last
    expected = names(keep=2, vary=count)

    def matches():
        running = started_in(pool, expected)
        if running is None:
            return None
        argv = {r["pid"]: r["argv"] for r in pool.events("start")}
        ok = all(argv[pid][-1] == f"round-{round_}" for name, pid in running.items() if name.startswith("vary."))
        return running if ok else None

    final = wait_for(matches, 20, f"the last good file (round {round_}, vary: {count})")
    assert {k: v for k, v in final.items() if k.startswith("keep.")} == keep
    code, output = pool.stop(runner)
    FIGURES.update(reloads=good_reloads + broken_reloads, reloads_good=good_reloads,
                   reloads_broken=broken_reloads)
    assert code == 0, output[-3000:]
    assert output.count("reload failed: the running pool is unchanged") == broken_reloads, (
        "each broken file must be refused, and logged"
    )
    assert output.count("entrypoint: reload: ") == good_reloads
    assert not manager_traceback(output), output[-5000:]
    for words in ("YAML syntax error", "duplicate key", "is a directory", "no such file", "empty file"):
        assert words in output, words


def test_reload_when_the_found_pool_file_is_deleted_keeps_the_pool(runner, tmp_path):
    """Found by the default lookup (pool.yml in the working directory, no --config) and then deleted:
    a HUP must refuse, not fall back to the WORKER_* environment and replace every worker."""
    pool = ChaosPool(runner, tmp_path, "q: 2\n", settings=BACKOFF)
    before = pool.wait_running(2)
    pool.config.unlink()
    pool.kill(signal.SIGHUP)
    pool.status()
    time.sleep(0.5)  # the time a wrong reload needs to do damage
    after = pool.live()
    pool.config.write_text("q: 2\n")  # so that nothing else happens while we stop
    _code, output = pool.stop(runner)
    assert after == before, f"a deleted pool file replaced the workers: {after} (was {before})"
    assert "reload failed: the running pool is unchanged" in output


# --- 4. fork failure (pids cgroup) --------------------------------------------------------------


def test_fork_failure_is_survived_retried_with_backoff_and_recovers(runner, tmp_path, pids_cgroup):
    config = tmp_path / "pool.yml"
    pool = ChaosPool(runner, tmp_path, "q: 0\n", "--config", str(config), settings=BACKOFF)
    wait_for(lambda: pool.alive() and os.path.exists(pool.socket), 10, "the pool's socket")
    pool.status()
    # The manager has no child yet: moved now, everything it starts is counted in the group.
    pids_cgroup.limit_pids(3)  # the manager and two workers
    pids_cgroup.add(pool.pid)
    fds_before = open_fds(pool.pid)

    pool.write_config("q: 5\n")
    pool.kill(signal.SIGHUP)
    window = 2.0
    time.sleep(window)
    failed_in_window = pids_cgroup.fork_failures()
    assert pool.alive(), "the manager died when fork failed"
    assert len(pool.wait_running(2)) == 2
    rows = {f"{w['group']}.{w['slot']}": w for w in pool.rows()}
    fds_while_failing = open_fds(pool.pid)

    pids_cgroup.limit_pids(None)
    raised = time.monotonic()
    pool.wait_running(5, timeout=BACKOFF_MAX + MARGIN + 3)
    recovery = time.monotonic() - raised
    failures = pids_cgroup.fork_failures()
    fds_after = open_fds(pool.pid)
    code, output = pool.stop(runner)
    FIGURES.update(fork_failures=failures, fork_recovery_seconds=round(recovery, 2),
                   fork_fd_delta=fds_after - fds_before)
    assert code == 0, output[-3000:]
    assert not manager_traceback(output), output[-5000:]
    # Three slots could not start: each retried, with backoff (no spin), and all ran once allowed.
    assert 3 <= failed_in_window <= 3 * (window / BACKOFF_MIN + 2), failed_in_window
    assert recovery <= BACKOFF_MAX + MARGIN
    assert fds_while_failing <= fds_before + FD_SLACK and fds_after <= fds_before + FD_SLACK, (
        fds_before, fds_while_failing, fds_after)
    # Said as what it is: fork trouble (EAGAIN from the pids limit), not a bad command.
    waiting = [w for w in rows.values() if w["pid"] is None]
    assert "cannot fork (Resource temporarily unavailable); retrying in" in output, output[-3000:]
    assert "a configuration error" not in output, output[-3000:]
    assert waiting and all("fork failed" in (w["last_exit"] or "") for w in waiting), rows


def test_a_failed_fork_costs_no_descriptors(monkeypatch):
    """spawn()'s fork path (the one for a terminal) opens its exec-report pipe before fork():
    when fork() raises, both ends must be closed, or every retry leaks two descriptors."""
    from entrypoint import spawn as spawning

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(spawning.os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        with pytest.raises(OSError):
            spawning.spawn(["true"], terminal=0)
    assert len(os.listdir("/proc/self/fd")) == before


# --- 5. the worker command disappears or loses its execute bit ---------------------------------


def test_worker_command_loses_execute_bit_or_vanishes_then_comes_back(runner, tmp_path, chaos):
    script = tmp_path / "bin" / "chaos-worker"
    script.parent.mkdir()
    text = f"#!{sys.executable}\n" + (PROGRAMS / "worker.py").read_text()
    script.write_text(text)
    script.chmod(0o755)
    group = f"q:\n  count: 2\n  command: {json.dumps([str(script), '{queues}'])}\n"
    # PID 1 of its own namespace: pids there are handed out one after another, so the gap between
    # the last worker before and the first after the outage counts every fork in between. There the
    # kernel ends everything with the pool, so what failed starts leave is checked while it runs.
    pool = ChaosPool(runner, tmp_path, group, namespace=True, settings=BACKOFF)
    pool.wait_running(2)
    phases = [
        ("chmod -x", lambda: script.chmod(0o644), lambda: script.chmod(0o755), "Permission denied"),
        ("rm", script.unlink, lambda: (script.write_text(text), script.chmod(0o755)), "command not found"),
    ]
    attempts = {}
    for what, break_it, restore, words in phases:
        time.sleep(BACKOFF_RESET + 0.3)  # the workers count as long-lived: a new outage is reported anew
        before = pool.wait_running(2)
        break_it()
        for pid in children_of(pool.pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(chaos.outage)
        assert pool.alive(), f"the manager died after {what}"
        rows = pool.rows()
        assert all(w["pid"] is None for w in rows), rows
        assert all(words in (w["last_exit"] or "") for w in rows), rows
        wait_for(lambda: children_of(pool.pid) == [], 5, "no process (nor zombie) left by the failed starts")
        restore()
        restored = time.monotonic()
        after = pool.wait_running(2, timeout=BACKOFF_MAX + MARGIN + 3)
        assert time.monotonic() - restored <= BACKOFF_MAX + MARGIN
        workers = sorted(pool.host_pid(pid) for pid in after.values())
        wait_for(lambda workers=workers: sorted(children_of(pool.pid)) == workers, 5,
                 "the two workers as the pool's only children")
        forks = max(after.values()) - max(before.values())
        attempts[what] = forks - 2  # the two that worked
        # hopeless starts wait backoff_max each: per slot one at once, then one per backoff_max
        bound = 2 * (chaos.outage / BACKOFF_MAX + 2)
        assert 2 <= attempts[what] <= bound, f"{what}: {attempts[what]} failed starts in {chaos.outage}s"
    code, output = pool.stop(runner)
    FIGURES.update(spawn_attempts_while_broken=attempts, broken_command_seconds=chaos.outage)
    assert code == 0, output[-3000:]
    # Reported at the start of each outage: once per group, or at most once per slot when the
    # slots' long-lived workers all exit together (each healthy exit re-arms the report).
    for words in ("Permission denied (exit 126)", "command not found (exit 127)"):
        reports = output.count(f"{script}: {words}: a configuration error, not a crash")
        assert 1 <= reports <= 2, output[-3000:]
    assert not manager_traceback(output), output[-5000:]


# --- 6. Redis stopped and restarted under a pool of RQ workers ---------------------------------


# An RQ worker's start-up on a loaded 2-core machine: imports, connecting, registering.
RQ_START = 5.0


def test_redis_restart_under_a_pool_of_rq_workers(runner, tmp_path, chaos):
    """Redis stops for a while under two RQ workers. RQ rides out an outage by itself, so the pool
    must leave such a worker alone (same pid, no restart). A worker that dies meanwhile must be
    replaced: its replacements cannot reach Redis and exit, so they back off, and one runs within
    the backoff once Redis is back. Jobs enqueued after the restart all run."""
    port = free_port()
    server, url = start_redis(tmp_path, port)
    try:
        pool = ChaosPool(runner, tmp_path, "chaos_jobs: 2\n", command=None, settings=BACKOFF, REDIS_URL=url)
        connection = redis.Redis.from_url(url)
        wait_for(lambda: len(rq.Worker.all(connection=connection)) == 2, 30, "two RQ workers registered")
        before = pool.live()
        stop_redis(server)
        os.kill(before["chaos_jobs.2"], signal.SIGKILL)  # a worker that dies while Redis is away
        time.sleep(chaos.outage)
        assert pool.alive()
        server, _ = start_redis(tmp_path, port)
        back = time.monotonic()

        def replaced_and_registered() -> dict[str, int] | None:
            live = pool.live()
            registered = {worker.pid for worker in rq.Worker.all(connection=connection)}
            new = live.get("chaos_jobs.2")
            return live if new not in (None, before["chaos_jobs.2"]) and new in registered else None

        after = wait_for(replaced_and_registered, BACKOFF_MAX + MARGIN + RQ_START + 10,
                         "a new chaos_jobs.2 registered with RQ")
        recovery = time.monotonic() - back
        queue = rq.Queue("chaos_jobs", connection=connection)
        jobs = [queue.enqueue("time.sleep", 0) for _ in range(5)]

        def finished() -> bool:
            states = [job.get_status(refresh=True) for job in jobs]
            assert "failed" not in states, states
            return all(state == "finished" for state in states)

        wait_for(finished, 30, "the jobs enqueued after the restart")
        restarts = {f"{w['group']}.{w['slot']}": w["restarts"] for w in pool.rows()}
        final = pool.live()
        code, output = pool.stop(runner)
    finally:
        stop_redis(server)
    FIGURES.update(redis_down_seconds=chaos.outage, rq_jobs_after_restart=len(jobs),
                   rq_worker_restarts=restarts, rq_recovery_seconds=round(recovery, 2))
    add("jobs_lost", len(jobs) - sum(job.get_status(refresh=False) == "finished" for job in jobs))
    assert after["chaos_jobs.1"] == final["chaos_jobs.1"] == before["chaos_jobs.1"], "the pool replaced a live worker"
    assert restarts["chaos_jobs.1"] == 0, restarts
    assert restarts["chaos_jobs.2"] >= 1, restarts  # the kill, then each start that found Redis away
    assert recovery <= BACKOFF_MAX + MARGIN + RQ_START, f"chaos_jobs.2 back {recovery:.1f}s after Redis"
    assert code == 0, output[-3000:]
    assert not manager_traceback(output), output[-5000:]
    # The one error it may have to say: slot 2's replacements failing fast while Redis was away.
    errors = [line for line in output.splitlines() if "entrypoint: error" in line]
    assert len(errors) <= 1 and all("group chaos_jobs is crash-looping: chaos_jobs.2 " in e for e in errors), errors


# --- hostile input at the command line ----------------------------------------------------------


def clean_exit(result: subprocess.CompletedProcess, allowed: set[int]) -> list[str]:
    """What is wrong with how `entrypoint` ended: an exit outside `allowed`, a traceback, stray lines."""
    wrong = []
    if result.returncode is None:
        wrong.append(f"still running after {QUICK:g}s (KILLed): {result.stdout[-300:]!r}")
    elif result.returncode not in allowed:
        wrong.append(f"exit {result.returncode}, expected one of {sorted(allowed)}")
    if "Traceback" in result.stdout + result.stderr:
        wrong.append("a traceback")
    # One line per problem: a CR or LF inside a message would start a line a log drain cannot
    # attribute (and a CR lets a terminal overwrite our prefix).
    lines = re.split(r"\r\n|\r|\n", result.stderr.removesuffix("\n")) if result.stderr else []
    stray = [line for line in lines if not line.startswith("entrypoint: ")]
    if stray:
        wrong.append(f"stderr lines without our prefix: {stray[:3]}")
    if result.returncode == 2 and not any(line.startswith("entrypoint: error: ") for line in lines):
        wrong.append("exit 2 with no error line")
    return wrong


# Only to catch a hang: a --check, an init running `true` or a steering request takes well under
# a second, the deepest hostile file about two on a busy 2-core machine, four of them at once.
QUICK = 15.0


def kill_tree(pid: int) -> None:
    """KILL a process and everything below it (stopped first, so it cannot replace what we kill)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    below, parents = set(), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat[stat.rfind(")") + 2:].split()[1])
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - below
        below |= frontier
    for victim in [*below, pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def run_quietly(runner: Runner, args: list, cwd: Path, env: dict | None = None,
                prefix: list[str] | tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """One `python -m entrypoint` run (behind `prefix`, such as setpriv), text out, counted as one input tried.

    One that has not ended after QUICK seconds is KILLed with all it started, and comes back
    with returncode None: these runs must never start anything that keeps running.
    """
    environment = runner.env(POOL_SOCKET=str(cwd / "no-pool.sock"))
    for name in ("POOL_CONFIG", "RESQUE_POOL_CONFIG", "WORKER_CONCURRENCY", "WORKER_COMMAND", "QUEUES",
                 "APP_ENV", "RACK_ENV", "RAILS_ENV", "RESQUE_ENV", "TERM_DELAY", "TERM_SENT_TO_ALL",
                 "MEMORY_LIMIT", "EXIT_ON_CRASH_LOOP"):
        environment.pop(name, None)
    environment.update(env or {})
    process = subprocess.Popen([*prefix, sys.executable, "-m", "entrypoint", *args], env=environment, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    add("inputs_tried", 1)
    try:
        out, err = process.communicate(timeout=QUICK)
        code = process.returncode
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        out, err = process.communicate()
        code = None
    return subprocess.CompletedProcess(process.args, code, out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace"))


ODD_NAMES = [
    "with space",
    "quo'te\"s",
    "semi;colon",
    "pipe|amp&gt>",
    "[bold]markup[/bold]",
    "ünïcødé-队列-🚀",
    "\\back\\slash",
    "#hash",
    "*star*",
]


def test_hostile_pool_files_exit_0_or_2_with_one_line_errors(runner, tmp_path):
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    evil = [f"$(touch {pwned})", f"`touch {pwned}`", f"x; touch {pwned}"]
    odd = ODD_NAMES + evil
    quoted = "".join(f"{json.dumps(name, ensure_ascii=False)}: 1\n" for name in odd)
    nested = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    # (label, content, expected exit, words the output must hold); content None: no file at all.
    cases: list[tuple[str, bytes | str | None, int, list[str]]] = [
        ("count over the cap", "q: 1001\n", 2, ["from 0 to 1000"]),
        ("huge count", "q: " + "9" * 400 + "\n", 2, ["from 0 to 1000"]),
        ("negative count", "q: -1\n", 2, ["from 0 to 1000"]),
        ("zero count", "q: 0\n", 0, []),
        ("float count", "q: 2.5\n", 2, ["whole number"]),
        ("infinite count", "q: .inf\n", 2, ["whole number"]),
        ("string count", "q: many\n", 2, ["whole number"]),
        ("hex count", "q: 0x10\n", 2, ["whole number"]),
        ("full-width digit count", "q: \uff15\n", 2, ["whole number"]),
        ("odd queue names", quoted, 0, odd),
        ("python tag", f"q: !!python/object/apply:os.system ['touch {pwned}']\n", 2, []),
        ("command substitution in a command",
         f"q:\n  count: 1\n  command: \"sh -c 'touch {pwned}' {{queues}}\"\n", 0, ["sh -c"]),
        ("variable holding a command", "q:\n  count: 1\n  command: echo ${EVIL}\n", 0, []),
        ("alias bomb", ALIAS_BOMB, 2, []),
        ("deep nesting", nested, 2, []),
        ("duplicate keys", "q: 1\nq: 2\n", 2, ["duplicate key"]),
        ("merge of itself", "a: &a\n  <<: *a\n  count: 1\n", 2, []),
        ("empty file", "", 2, ["empty file"]),
        ("only a comment", "# nothing\n", 2, ["empty file"]),
        ("binary", bytes(range(256)) * 4, 2, []),
        ("NUL bytes", b"q: 1\x00\n", 2, []),
        ("invalid UTF-8", b"q: \xff\n", 2, []),
        ("UTF-16", "q: 1\n".encode("utf-16"), 2, []),
        ("over 1 MiB", "q: 1\n#" + "x" * (1 << 20) + "\n", 2, []),
        ("a list", "- q\n", 2, []),
        ("a scalar", "q\n", 2, []),
        ("ERB", "'*': <%= ENV['WORKER_CONCURRENCY'] %>\n", 2, ["ERB"]),
        ("unset variable", "q: ${CHAOS_UNSET}\n", 2, ["CHAOS_UNSET"]),
        ("empty queue name", "'q,,r': 1\n", 2, []),
        ("missing file", None, 2, ["no such file"]),
        ("a directory", "DIRECTORY", 2, ["is a directory"]),
    ]

    def one(index: int, case) -> list[str]:
        label, content, expected, words = case
        work = tmp_path / f"case-{index}"
        work.mkdir()
        path = work / "pool.yml"
        put(path, content)
        result = run_quietly(runner, ["--check", "--config", str(path)], work,
                             {"EVIL": f"$(touch {pwned})", "WORKER_COMMAND": "work {queues}"})
        wrong = clean_exit(result, {0, 2})
        if result.returncode != expected:
            wrong.append(f"exit {result.returncode}, expected {expected}")
        output = result.stdout + result.stderr
        wrong += [f"{word!r} not in the output" for word in words if word not in output]
        return [f"{label}: {w}\n{output[-800:]}" for w in wrong]

    with ThreadPoolExecutor(4) as workers:
        found = [w for wrong in workers.map(one, range(len(cases)), cases) for w in wrong]
    assert not pwned.exists(), "a hostile file made something run"
    assert not found, "\n".join(found)
    FIGURES["hostile_files"] = len(cases)


@pytest.mark.parametrize(("label", "name", "content"), [
    ("a newline in a queue name", "pool.yml", '"a\\nb": many\n'),
    ("a carriage return in a queue name", "pool.yml", '"a\\rb": many\n'),
    ("a newline in the file's name", "no\nsuch.yml", None),
])
def test_every_problem_stays_on_one_line_whatever_the_names_hold(runner, tmp_path, label, name, content):
    """Names are quoted by YAML, so they may hold line breaks; the error about them must not."""
    if content is not None:
        (tmp_path / name).write_text(content)
    result = run_quietly(runner, ["--check", "--config", name], tmp_path)
    assert result.returncode == 2
    assert not clean_exit(result, {2}), f"{label}: {result.stderr!r}"


def test_empty_scale_is_a_usage_error_not_a_second_pool(runner, tmp_path):
    """`entrypoint --scale "$SPEC"` with SPEC empty must say so, not start a pool of its own."""
    result = run_quietly(runner, ["--scale", "", "--socket", str(tmp_path / "none.sock")], tmp_path)
    assert not clean_exit(result, {2}), result


def test_a_malformed_dotenv_line_is_reported_with_our_prefix(runner, tmp_path):
    """python-dotenv skips a line it cannot parse, with a bare warning of its own: ours names the
    file and line and refuses it as any bad configuration is refused (exit 2), at --check and at
    start."""
    (tmp_path / "pool.yml").write_text("q: 1\n")
    (tmp_path / ".env").write_text("GOOD=1\nthis is not a statement\n")
    for args in (["--check"], []):
        result = run_quietly(runner, args, tmp_path, {"WORKER_COMMAND": "work {queues}"})
        assert not clean_exit(result, {2}), (args, result.stderr)
        assert result.stderr == "entrypoint: error: .env:2: cannot parse this line (expected NAME=value)\n", args


def test_unreadable_pool_file(runner, tmp_path):
    """Root reads every file: as root the run gives up the capabilities that let it (setpriv), and
    stays root, so it still reads the interpreter wherever it is installed (pyenv's under /root)."""
    path = tmp_path / "pool.yml"
    path.write_text("q: 1\n")
    path.chmod(0)
    no_override = "-dac_override,-dac_read_search"
    without_root_reads = [installed_tool("setpriv", "scripts/test installs it (util-linux)"),
                          f"--inh-caps={no_override}", f"--bounding-set={no_override}"] if os.geteuid() == 0 else []
    result = run_quietly(runner, ["--check", "--config", str(path)], tmp_path, prefix=without_root_reads)
    assert not clean_exit(result, {2}), result
    assert result.stderr == f"entrypoint: error: {path}: config: cannot read: Permission denied\n"


def test_odd_queue_names_reach_real_workers_verbatim_and_run_nothing(runner, tmp_path):
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    odd = [*ODD_NAMES, f"$(touch {pwned})", f"`touch {pwned}`"]
    config = "".join(f"{json.dumps(name, ensure_ascii=False)}: 1\n" for name in odd)
    pool = ChaosPool(runner, tmp_path, config, settings=BACKOFF)
    pool.wait_running(len(odd))
    starts = {r["group"]: r for r in pool.events("start")}
    code, output = pool.stop(runner)
    assert code == 0, output[-3000:]
    assert not pwned.exists(), "a queue name was run by a shell"
    for name in odd:
        assert starts[name]["argv"] == [name] and starts[name]["queues"] == name, starts.get(name)


# Text a hostile user could type: no NUL (argv and the environment cannot hold one) and no lone
# surrogates (they cannot be encoded).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
NUMBERISH = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["", " ", "1e3", "1e309", "0x1f", "+5", "5.", ".5", "1_0", "\u0663", "\uff15", "auto", "AUTO",
                     " 3 ", "-0", "000000001", "9" * 40, "nan", "-inf", "10s", "1m", "~", "null", "'5'"]),
    TEXT,
)
SIGNALISH = st.one_of(
    st.sampled_from(["TERM", "SIGTERM", "term", "15", "0", "32", "-1", "KILL", "SIG_DFL", "CHLD", "STOP"]),
    NUMBERISH,
)
REWRITE = st.one_of(st.tuples(SIGNALISH, SIGNALISH).map(":".join), TEXT)
SWITCH = st.one_of(st.sampled_from(["1", "0", "yes", "no", "on", "off", "true", "FALSE", ""]), TEXT)


def optional(strategy):
    return st.one_of(st.none(), strategy)


def property_settings(chaos: Chaos, share: float = 1.0):
    # No shrinking: each step would cost a subprocess (and a hang QUICK seconds); the example as
    # found, with the arguments in the assertion message, is enough to reproduce.
    return settings(max_examples=max(5, int(chaos.examples * share)), deadline=None, database=None,
                    derandomize=not chaos.long, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.reuse, Phase.generate], report_multiple_bugs=False)


def arguments(pairs: list[tuple[str, str | None]]) -> list[str]:
    # --flag=VALUE: the value is always the flag's, even when it starts with a dash.
    return [f"{flag}={value}" for flag, value in pairs if value is not None]


def environment(pairs: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in pairs.items() if v is not None}


def test_hostile_pool_arguments_env_and_files_with_check(runner, tmp_path, chaos):
    case = iter(range(1_000_000))
    entry = st.tuples(st.one_of(TEXT.filter(bool), st.sampled_from(ODD_NAMES)), NUMBERISH, st.booleans())
    pool_value = st.tuples(st.sampled_from(["term_timeout", "backoff_min", "backoff_max", "backoff_reset",
                                            "spawn_delay", "max_workers", "stop_signal", "memory_limit",
                                            "exit_on_crash_loop"]), NUMBERISH)

    @property_settings(chaos)
    @given(
        mode=st.sampled_from(["file", "environment"]),
        entries=st.lists(entry, min_size=1, max_size=3),
        pool_values=st.lists(pool_value, max_size=2),
        flags=st.fixed_dictionaries({"--term-timeout": optional(NUMBERISH), "--term-delay": optional(NUMBERISH)}),
        switches=st.lists(st.sampled_from(["--exit-on-crash-loop", "--prefix", "-v", "--term-sent-to-all",
                                           "--no-term-sent-to-all"]), max_size=2),
        env=st.fixed_dictionaries({name: optional(strategy) for name, strategy in [
            ("TERM_TIMEOUT", NUMBERISH), ("TERM_DELAY", NUMBERISH), ("TERM_SENT_TO_ALL", SWITCH),
            ("WORKER_CONCURRENCY", NUMBERISH), ("QUEUES", TEXT), ("WORKER_COMMAND", TEXT),
            ("APP_ENV", TEXT), ("EXIT_ON_CRASH_LOOP", SWITCH)]}),
        dotenv=optional(TEXT),
    )
    def check(mode, entries, pool_values, flags, switches, env, dotenv):
        work = tmp_path / f"pool-{next(case)}"
        work.mkdir()
        args = ["--check", *switches, *arguments(list(flags.items()))]
        if mode == "file":
            lines = [f"{json.dumps(name, ensure_ascii=False)}: {json.dumps(count) if quote else count}\n"
                     for name, count, quote in entries]
            if pool_values:
                lines.append("pool:\n" + "".join(f"  {key}: {json.dumps(value)}\n" for key, value in pool_values))
            (work / "pool.yml").write_text("".join(lines))
            args += ["--config", "pool.yml"]
        if dotenv is not None:
            (work / ".env").write_text(dotenv)
        result = run_quietly(runner, args, work, environment(env))
        assert not clean_exit(result, {0, 2}), (args, env, result.stdout[-500:], result.stderr[-1500:])

    check()


def test_hostile_init_arguments_and_env_with_true(runner, tmp_path, chaos):
    @property_settings(chaos)
    @given(
        flags=st.lists(st.tuples(st.sampled_from(["--term-timeout", "--term-delay", "--rewrite", "--remap-exit"]),
                                 st.one_of(NUMBERISH, REWRITE)), max_size=4),
        rewrites=st.lists(REWRITE, max_size=3),
        codes=st.lists(NUMBERISH, max_size=2),
        switches=st.lists(st.sampled_from(["-g", "-v", "-vv", "--term-sent-to-all", "--no-term-sent-to-all"]),
                          max_size=2),
        env=st.fixed_dictionaries({"TERM_TIMEOUT": optional(NUMBERISH), "TERM_DELAY": optional(NUMBERISH),
                                   "TERM_SENT_TO_ALL": optional(SWITCH)}),
    )
    def init(flags, rewrites, codes, switches, env):
        pairs = [*flags, *(("--rewrite", r) for r in rewrites), *(("--remap-exit", c) for c in codes)]
        args = [*switches, *arguments(pairs), "--", "true"]
        result = run_quietly(runner, args, tmp_path, environment(env))
        assert not clean_exit(result, {0, 2}), (args, env, result.stderr[-1500:])

    init()


def test_hostile_steering_arguments_without_a_pool(runner, tmp_path, chaos):
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    socket_name = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00/"),
                          min_size=1, max_size=120)

    @property_settings(chaos, share=0.5)
    @given(
        action=st.one_of(
            st.tuples(st.just("--scale"), st.one_of(TEXT, st.tuples(TEXT, NUMBERISH).map("=".join))),
            st.tuples(st.sampled_from(["--status", "--reload"]), st.none()),
        ),
        name=socket_name,
        as_json=st.booleans(),
    )
    def steer(action, name, as_json):
        flag, value = action
        args = [flag if value is None else f"{flag}={value}", f"--socket={nowhere / name}"]
        args += ["--json"] if as_json else []
        result = run_quietly(runner, args, tmp_path)
        assert not clean_exit(result, {2, 4}), (args, result.stderr[-1500:])

    steer()

"""The monitor process with real pools, a real redis-server and real RQ jobs: backlog in --status, a Redis outage,
the fleet view, the metrics endpoint, and what PID 1 never imports."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from conftest import ROOT, Runner, marked_processes, process_state, wait_for
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis_fixture import free_port, redis_server, start_redis, stop_redis  # noqa: F401 - a fixture
from rq import Queue
from test_supervisor import Pool

from entrypoint.control import request
from entrypoint.monitor import FLEET_PREFIX
from entrypoint.monitoring import FLEET_TTL, INTERVAL, STALE_AFTER

SLEEPERS = "sleepers:\n  count: 2\n  command: sleep 1000\n"
# A configured time plus this: python's start-up on a loaded 2-core machine, and our polling.
MARGIN = 3.0


class MonitoredPool(Pool):
    """test_supervisor's Pool with its file as written: a group with no command runs RQ's worker."""

    def __init__(self, runner: Runner, directory: Path, config: str, *args: str, namespace: bool = False,
                 **env: str) -> None:
        directory.mkdir(exist_ok=True)
        super().__init__(runner, directory, config, "--config", str(directory / "pool.yml"), *args,
                         namespace=namespace, **env)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def status(self) -> dict | None:
        try:
            return super().status()
        except OSError:
            return None

    def wait(self, predicate, what: str, timeout: float = 15) -> dict:
        return wait_for(lambda: (status := self.status()) is not None and predicate(status) and status,
                        timeout, what)

    def stop(self) -> str:
        self.kill(signal.SIGTERM)
        code, output = self.finish()
        assert code == 0, output
        return output


def running(status: dict) -> dict[str, int]:
    return {f"{w['group']}.{w['slot']}": w["pid"] for w in status["workers"] if w["state"] == "running"}


def backlog(status: dict, group: str) -> dict | None:
    return status["groups"][group]["backlog"]


def enqueue(url: str, queue: str, count: int) -> list[str]:
    connection = Redis.from_url(url)
    return [Queue(queue, connection=connection).enqueue("os.getpid").id for _ in range(count)]


def backdate(url: str, job_id: str, seconds: float) -> None:
    """Make the job look enqueued `seconds` ago, in RQ's own format."""
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    Redis.from_url(url).hset(f"rq:job:{job_id}", "enqueued_at", moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


# ------------------------------------------------------------------------------- backlog


def test_backlog_counts_every_waiting_job_of_a_groups_queues_and_the_oldests_age(runner, tmp_path, redis_server):  # noqa: F811
    oldest = enqueue(redis_server, "q", 3)[0]
    backdate(redis_server, oldest, 120)
    enqueue(redis_server, "r", 2)
    enqueue(redis_server, "elsewhere", 1)
    config = 'q: 0\n"q,r": 0\n"*": 0\n' + SLEEPERS
    pool = MonitoredPool(runner, tmp_path / "pool", config, REDIS_URL=redis_server)
    status = pool.wait(lambda s: all(backlog(s, g) for g in ("q", "q,r", "*")), "every RQ group's backlog")
    q, both, every = (backlog(status, g) for g in ("q", "q,r", "*"))
    assert (q["waiting"], both["waiting"], every["waiting"]) == (3, 5, 6)
    assert 120 <= q["oldest"] <= 120 + MARGIN and 120 <= every["oldest"] <= 120 + MARGIN
    assert both["oldest"] == q["oldest"] or abs(both["oldest"] - q["oldest"]) <= INTERVAL
    assert status["groups"]["sleepers"]["backlog"] is None, "not an RQ group: unknown, not 0"
    assert 0 <= q["age"] <= INTERVAL + MARGIN and not q["stale"]
    table = runner.run(["--status", "--socket", pool.socket], timeout=20).stdout
    assert "3 waiting, oldest 12" in table and "6 waiting" in table
    pool.stop()


def test_a_redis_outage_changes_nothing_in_the_pool_but_the_staleness_mark(runner, tmp_path):
    redis, url = start_redis(tmp_path)
    try:
        enqueue(url, "q", 4)
        pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n" + SLEEPERS, REDIS_URL=url)
        before = pool.wait(lambda s: len(running(s)) == 2 and backlog(s, "q") and s["monitor"]["pid"],
                           "two sleepers and the backlog")
        assert backlog(before, "q")["waiting"] == 4
        stop_redis(redis)
        outage_began = time.monotonic()
        ages = []
        while time.monotonic() - outage_began < 10:
            asked = time.monotonic()
            status = pool.status()
            assert status is not None and time.monotonic() - asked < 1.0, "the manager's loop stalled"
            assert running(status) == running(before)
            assert [w["restarts"] for w in status["workers"]] == [0, 0]
            assert status["monitor"]["pid"] == before["monitor"]["pid"], "the monitor rides the outage out"
            assert backlog(status, "q")["waiting"] == 4, "the last reading stays"
            ages.append(backlog(status, "q")["age"])
            time.sleep(0.5)
        settled = ages[2:]  # a round that began before the stop may still land in the first second
        assert settled == sorted(settled) and ages[-1] >= 10 - MARGIN
        stale = pool.status()
        assert backlog(stale, "q")["stale"] is True
        assert "Redis at 127.0.0.1" in stale["monitor"]["error"]
        redis, _ = start_redis(tmp_path, int(url.rsplit(":", 1)[1].split("/")[0]))
        enqueue(url, "q", 1)
        fresh = pool.wait(lambda s: not backlog(s, "q")["stale"] and backlog(s, "q")["waiting"] == 1,
                          "a fresh reading", timeout=STALE_AFTER + MARGIN)
        assert fresh["monitor"]["error"] is None and running(fresh) == running(before)
        assert fresh["exits"] == {} and fresh["monitor"]["restarts"] == 0
        output = pool.stop()
    finally:
        stop_redis(redis)
    assert output.count("the backlog shown is the last one read") == 1, output
    assert output.count("monitor: Redis answers again") == 1, output


# ------------------------------------------------------------------------------- the fleet


def fleet(runner: Runner, url: str) -> dict[str, dict]:
    result = runner.run(["--fleet", "--json"], env=runner.env(REDIS_URL=url), timeout=20)
    assert result.returncode == 0, result.stderr
    return {entry["pool_id"]: entry for entry in json.loads(result.stdout)}


def test_every_pool_on_one_redis_is_in_the_fleet_until_it_stops_or_its_entry_expires(runner, tmp_path,
                                                                                        redis_server):  # noqa: F811
    secret = "s3cret-value-of-an-env-variable"
    first = MonitoredPool(runner, tmp_path / "first", "q: 0\n" + SLEEPERS, REDIS_URL=redis_server, API_TOKEN=secret)
    second = MonitoredPool(runner, tmp_path / "second", SLEEPERS, namespace=True, REDIS_URL=redis_server,
                           API_TOKEN=secret)
    ids = [pool.wait(lambda s: len(running(s)) == 2, "two sleepers")["pool_id"] for pool in (first, second)]
    assert ids[1].endswith(":1"), "the second pool is PID 1 of its namespace"
    pools = wait_for(lambda: (found := fleet(runner, redis_server)) and set(found) == set(ids)
                     and all(p["groups"]["sleepers"]["running"] == 2 for p in found.values()) and found,
                     INTERVAL + MARGIN, "both pools in the fleet")
    assert pools[ids[0]]["groups"]["q"]["backlog"]["waiting"] == 0
    assert pools[ids[1]]["state"] == "running" and pools[ids[1]]["host"] == ids[1].rpartition(":")[0]
    table = runner.run(["--fleet"], env=runner.env(REDIS_URL=redis_server), timeout=20).stdout
    assert "2 pool(s)" in table and ids[0] in table and "sleepers 2/2" in table
    raw = b"".join(Redis.from_url(redis_server).get(FLEET_PREFIX + pool_id) for pool_id in ids).decode()
    assert secret not in raw and redis_server not in raw and "sleep 1000" not in raw
    first.stop()
    assert set(fleet(runner, redis_server)) == {ids[1]}, "a pool that stops takes its entry with it"
    # The whole namespace dies at once, as with a node lost: its monitor, frozen first, gets no chance
    # to see the manager's channel close (which it would answer by taking the entry away).
    os.kill(second.host_pid(second.status()["monitor"]["pid"]), signal.SIGSTOP)
    os.kill(second.pid, signal.SIGKILL)
    second.process.communicate(timeout=10)
    killed = time.monotonic()
    assert set(fleet(runner, redis_server)) == {ids[1]}, "only its time-to-live ends it"
    wait_for(lambda: fleet(runner, redis_server) == {}, FLEET_TTL + MARGIN, "the killed pool's entry to expire")
    assert time.monotonic() - killed >= FLEET_TTL - INTERVAL - MARGIN


def test_fleet_without_a_reachable_redis_is_one_line_and_exit_4(runner):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = runner.run(["--fleet"], env=runner.env(REDIS_URL=url), timeout=30)
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.startswith(f"entrypoint: error: cannot read the fleet from Redis at {url[8:]}: ")
    assert result.stderr.count("\n") == 1


def test_pool_fleet_false_publishes_nothing(runner, tmp_path, redis_server):  # noqa: F811
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\npool:\n  fleet: false\n", REDIS_URL=redis_server)
    pool.wait(lambda s: backlog(s, "q") and backlog(s, "q")["age"] >= INTERVAL, "two rounds of the monitor")
    assert fleet(runner, redis_server) == {}
    pool.stop()


def test_a_reload_tells_the_running_monitor_and_retires_it_when_nothing_is_left_to_do(runner, tmp_path,
                                                                                       redis_server):  # noqa: F811
    enqueue(redis_server, "r", 2)
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n", REDIS_URL=redis_server)
    before = pool.wait(lambda s: backlog(s, "q"), "q's backlog")
    assert set(fleet(runner, redis_server)) == {before["pool_id"]}
    pool.write_config("r: 0\npool:\n  fleet: false\n")
    pool.kill(signal.SIGHUP)
    after = pool.wait(lambda s: "r" in s["groups"] and backlog(s, "r"), "r's backlog")
    assert "q" not in after["groups"] and backlog(after, "r")["waiting"] == 2
    assert after["monitor"]["pid"] == before["monitor"]["pid"], "told, not replaced"
    wait_for(lambda: fleet(runner, redis_server) == {}, INTERVAL + MARGIN, "pool.fleet: false to take the entry away")
    pool.write_config(SLEEPERS + "pool:\n  fleet: false\n")  # no RQ group, no fleet, no metrics port
    pool.kill(signal.SIGHUP)
    pool.wait(lambda s: s["monitor"] is None and len(running(s)) == 2, "the monitor retired")
    monitor = pool.host_pid(before["monitor"]["pid"])
    wait_for(lambda: process_state(monitor) is None, MARGIN, "the retired monitor to exit")
    pool.stop()


# ------------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_endpoint_says_what_status_says(runner, tmp_path, redis_server):  # noqa: F811
    enqueue(redis_server, "q", 5)
    port = free_port()
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n" + SLEEPERS, "--metrics-port", str(port),
                         REDIS_URL=redis_server)
    first = pool.wait(lambda s: len(running(s)) == 2 and backlog(s, "q"), "two sleepers and the backlog")
    os.kill(running(first)["sleepers.1"], signal.SIGKILL)
    pool.wait(lambda s: len(running(s)) == 2 and s["exits"], "the killed sleeper replaced")
    time.sleep(INTERVAL)  # a stable pool: nothing due but the next reading
    samples = scrape(port)
    status = pool.status()
    for group, entry in status["groups"].items():
        label = (("group", group),)
        assert samples[("entrypoint_workers_running", label)] == entry["running"]
        assert samples[("entrypoint_workers_wanted", label)] == entry["wanted"]
        assert samples[("entrypoint_group_crash_looping", label)] == int(entry["crash_looping"])
    assert samples[("entrypoint_worker_exits_total", (("group", "sleepers"), ("reason", "signaled")))] == 1
    assert samples[("entrypoint_worker_restarts_total", (("group", "sleepers"),))] == sum(
        w["restarts"] for w in status["workers"] if w["group"] == "sleepers") == 1
    assert samples[("entrypoint_backlog_waiting_jobs", (("group", "q"),))] == backlog(status, "q")["waiting"] == 5
    assert abs(samples[("entrypoint_backlog_age_seconds", (("group", "q"),))]
               - backlog(status, "q")["age"]) <= INTERVAL + MARGIN
    assert samples[("entrypoint_pool_up", (("pool_id", status["pool_id"]),))] == 1
    assert samples[("entrypoint_helper_restarts_total", (("process", "monitor"),))] == status["monitor"]["restarts"]
    memory = status["memory"]
    for name, labels, value in [("entrypoint_pool_memory_bytes", (), memory["total"]),
                                ("entrypoint_process_memory_bytes", (("process", "manager"),), memory["manager"]),
                                ("entrypoint_process_memory_bytes", (("process", "monitor"),), memory["monitor"]),
                                ("entrypoint_group_memory_bytes", (("group", "sleepers"),),
                                 sum(w["memory"] for w in status["workers"] if w["group"] == "sleepers"))]:
        # Two measurements a moment apart: an idle pool's pages barely move between them.
        assert value > 0 and abs(samples[(name, labels)] - value) <= 0.05 * value, (name, labels)
    pool.stop()


def listening_sockets(pids: list[int]) -> list[tuple[int, int]]:
    """(pid, port) of every TCP socket these processes hold that listens."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                listening[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                found.append((pid, listening[target[8:-1]]))
    return found


def test_metrics_are_off_by_default_no_port_and_no_prometheus_client_anywhere(runner, tmp_path, redis_server):  # noqa: F811
    tripwire = tmp_path / "tripwire"
    (tripwire / "prometheus_client").mkdir(parents=True)
    marks = tmp_path / "imported-by"
    (tripwire / "prometheus_client" / "__init__.py").write_text(
        f"import os\nopen({str(marks)!r}, 'a').write(f'{{os.getpid()}}\\n')\n")
    env = {"REDIS_URL": redis_server, "PYTHONPATH": f"{tripwire}:{ROOT}"}
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n" + SLEEPERS, **env)
    status = pool.wait(lambda s: len(running(s)) == 2 and backlog(s, "q"), "two sleepers and the backlog")
    ours = [pid for pid, state in marked_processes(runner.mark) if state != "Z"]
    assert status["monitor"]["pid"] in ours
    assert listening_sockets(ours) == []
    assert not marks.exists(), f"prometheus_client imported by pid {marks.read_text()}"
    assert status["monitor"]["metrics"] is None
    pool.stop()
    # the tripwire does fire when a port is set
    port = free_port()
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n", "--metrics-port", str(port), **env)
    status = pool.wait(lambda s: s["monitor"]["metrics"], "the monitor's word on metrics")
    assert marks.read_text() == f"{status['monitor']['pid']}\n"
    assert "prometheus_client" in status["monitor"]["metrics"], "our stand-in has no start_http_server"
    pool.stop()


# ------------------------------------------------------------------------------- the monitor process


def test_pid_1_never_imports_redis_or_prometheus_client_and_a_killed_monitor_is_replaced(runner, tmp_path,
                                                                                          redis_server):  # noqa: F811
    port = free_port()
    pool = MonitoredPool(runner, tmp_path / "pool", "q: 0\n" + SLEEPERS, "--metrics-port", str(port),
                         namespace=True, REDIS_URL=redis_server)
    before = pool.wait(lambda s: len(running(s)) == 2 and backlog(s, "q") and s["monitor"]["metrics"],
                       "two sleepers, the backlog and the metrics")
    assert scrape(port)[("entrypoint_workers_running", (("group", "sleepers"),))] == 2
    modules = request(pool.socket, {"command": "modules"})["modules"]
    assert "entrypoint.monitoring" in modules, "asked the wrong process"
    heavy = [name for name in modules if name.split(".")[0] in ("redis", "prometheus_client", "rq", "rich")]
    assert heavy == []
    monitor = pool.host_pid(before["monitor"]["pid"])
    os.kill(monitor, signal.SIGKILL)
    after = pool.wait(lambda s: s["monitor"]["pid"] not in (None, before["monitor"]["pid"])
                      and s["monitor"]["metrics"] and s["monitor"]["state"] == "running",
                      "a new monitor", timeout=MARGIN + 5)
    assert after["monitor"]["restarts"] == 1 and after["monitor"]["last_exit"] == "killed by SIGKILL"
    assert running(after) == running(before) and after["exits"] == {}, "the workers never noticed"
    samples = scrape(port)  # the new monitor serves them on the same port
    assert samples[("entrypoint_helper_restarts_total", (("process", "monitor"),))] == 1
    output = pool.stop()
    assert f"monitor pid {before['monitor']['pid']} killed by SIGKILL" in output
    assert "workers are not affected; a new monitor now" in output


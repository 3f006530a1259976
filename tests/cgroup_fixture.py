"""Real cgroups for tests, v1 and v2: the `memory_cgroup` and `pids_cgroup` fixtures (conftest
offers them to every test module) and the `Cgroup` they yield.

Each fixture gives a fresh, empty group with its controller and runs the test once per cgroup
version. A controller is bound to one hierarchy at a time (a hybrid host keeps memory and pids
in v1, a current distribution in v2), so on most machines one of the two runs is skipped, with a
reason that names what the machine lacks. A v1 group is made below our own; a v2 group below
the nearest cgroup on our path that already delegates the controller (its cgroup.subtree_control
names it): enabling a controller ourselves would reconfigure the host, and cgroup v2 refuses it
in a cgroup that holds processes. Whatever is left in the group is KILLed, then it is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REMOVE_TIMEOUT = 10.0


class Unavailable(Exception):
    """This machine cannot give us a group of this version with this controller; the message says why."""


@dataclass(frozen=True)
class Cgroup:
    """One cgroup directory of ours, read and written through the files of its version."""

    version: int
    path: Path
    controller: str

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

    def child(self, name: str) -> Cgroup:
        """A group below this one, with the same controller (removed with this one)."""
        if self.version == 2:  # allowed here: a test's group holds no process of its own
            (self.path / "cgroup.subtree_control").write_text(f"+{self.controller}")
        (self.path / name).mkdir()
        return Cgroup(self.version, self.path / name, self.controller)

    # -- memory ----------------------------------------------------------------------------------

    @property
    def memory_limit_file(self) -> Path:
        return self.path / ("memory.limit_in_bytes" if self.version == 1 else "memory.max")

    def limit_memory(self, size: int) -> None:
        """A hard limit with no swap to escape to: going over it means reclaim, then the OOM killer."""
        self.memory_limit_file.write_text(str(size))
        swap = self.path / ("memory.memsw.limit_in_bytes" if self.version == 1 else "memory.swap.max")
        if swap.exists():  # v1 counts memory + swap here, so it equals the limit; v2 counts swap alone
            swap.write_text(str(size) if self.version == 1 else "0")

    def peak(self) -> int:
        """The most memory the group has been charged for since it was made."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        if not (self.path / name).exists():
            pytest.skip(f"{self.path / name} is missing: cgroup v2 reports a peak from Linux 5.19 on")
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer has killed in the group (memory.oom_control or memory.events)."""
        text = (self.path / ("memory.oom_control" if self.version == 1 else "memory.events")).read_text()
        return int(_fields(text).get("oom_kill", 0))

    # -- pids ------------------------------------------------------------------------------------

    def limit_pids(self, count: int | None) -> None:
        (self.path / "pids.max").write_text("max" if count is None else str(count))

    def fork_failures(self) -> int:
        """Forks refused because the group was at pids.max."""
        return int(_fields((self.path / "pids.events").read_text()).get("max", 0))


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)


# -- where a group can go ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    root: str
    point: Path
    fstype: str
    options: tuple[str, ...]


def _mounts() -> list[_Mount]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-", 6)  # optional fields (shared:N ...) come before the "-"
        found.append(_Mount(_unescape(fields[3]), Path(_unescape(fields[4])), fields[dash + 1],
                            tuple(fields[dash + 3].split(","))))
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_paths() -> dict[str, str]:
    """Our cgroup path per v1 controller, and under "" our v2 path."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if hierarchy != "0" else [""]:
            paths[name] = path
    return paths


def _below(mount: _Mount, path: str) -> Path:
    """Our cgroup's directory under this mount (its root may be a sub-hierarchy, as in a container)."""
    cgroup = PurePosixPath(path)
    if ".." in cgroup.parts or not cgroup.is_relative_to(mount.root):
        return mount.point
    return mount.point / cgroup.relative_to(mount.root)


def v1_parent(controller: str) -> Path:
    mount = next((m for m in _mounts() if m.fstype == "cgroup" and controller in m.options), None)
    path = _own_paths().get(controller)
    if mount is None or path is None:
        raise Unavailable(f"no cgroup v1 hierarchy has the {controller} controller here")
    return _below(mount, path)


def v2_parent(controller: str) -> Path:
    mount = next((m for m in _mounts() if m.fstype == "cgroup2"), None)
    if mount is None:
        raise Unavailable("no cgroup2 filesystem is mounted")
    offered = (mount.point / "cgroup.controllers").read_text().split()
    if controller not in offered:
        elsewhere = " (it is bound to cgroup v1)" if controller in _v1_controllers() else ""
        raise Unavailable(f"the cgroup2 mount at {mount.point} offers {' '.join(offered) or 'no controller'}, "
                          f"not {controller}{elsewhere}")
    own = _below(mount, _own_paths().get("", "/"))
    for candidate in (own, *own.parents):
        if controller in (candidate / "cgroup.subtree_control").read_text().split():
            return candidate
        if candidate == mount.point:
            break
    raise Unavailable(f"no cgroup from {own} up to {mount.point} delegates {controller} to its children "
                      "(cgroup.subtree_control), and a cgroup holding processes cannot start to")


def _v1_controllers() -> list[str]:
    return [option for m in _mounts() if m.fstype == "cgroup" for option in m.options]


@contextlib.contextmanager
def fresh_cgroup(version: int, controller: str) -> Iterator[Cgroup]:
    """A new, empty group of this version with this controller; the test is skipped where there is none."""
    try:
        parent = v1_parent(controller) if version == 1 else v2_parent(controller)
    except Unavailable as why:
        pytest.skip(f"cgroup v{version} {controller}: {why}")
    group = parent / f"entrypoint-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cgroup v{version} {controller}: cannot create a group under {parent}: {error.strerror}")
    try:
        yield Cgroup(version, group, controller)
    finally:
        _remove(group)


def _remove(group: Path) -> None:
    """KILL what is left in the group until it is empty, then remove it (a test bug if it never empties)."""
    for below in group.iterdir():
        if below.is_dir():
            _remove(below)
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while True:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(params=[1, 2], ids=["cgroup-v1", "cgroup-v2"])
def memory_cgroup(request: pytest.FixtureRequest) -> Iterator[Cgroup]:
    """A fresh memory cgroup, v1 then v2."""
    with fresh_cgroup(request.param, "memory") as group:
        yield group


@pytest.fixture(params=[1, 2], ids=["cgroup-v1", "cgroup-v2"])
def pids_cgroup(request: pytest.FixtureRequest) -> Iterator[Cgroup]:
    """A fresh pids cgroup, v1 then v2."""
    with fresh_cgroup(request.param, "pids") as group:
        yield group

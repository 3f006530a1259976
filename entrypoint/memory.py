"""Memory: the container's limit, what each worker really uses, and sizes written by people."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from entrypoint.reaper import below

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from 512M, 1G, 1.5GiB, 300mb or a plain number of bytes (binary units, as Heroku's)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"{text!r} is not a positive size")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 512M, 1G or a number of bytes)")
    number, unit, _suffix = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return size


# v1 reports "no limit" as the largest page-aligned signed 64-bit number; anything this large
# cannot be a real machine's memory, so it is treated the same way.
_UNLIMITED = 2**62

_LIMIT_FILE = {1: "memory.limit_in_bytes", 2: "memory.max"}
_USAGE_FILE = {1: "memory.usage_in_bytes", 2: "memory.current"}
_EVENTS_FILE = {1: "memory.oom_control", 2: "memory.events"}

_SIZE_HINT = "expected a size such as 512M, 1G or a number of bytes"
_NO_CONTROLLER = "no cgroup memory controller found"


class MemoryLimit(NamedTuple):
    """bytes is None when no limit is known; source says where the number came from."""

    bytes: int | None
    source: str
    cgroup_dir: str | None
    # Added so callers can hand cgroup_dir to read_usage/read_oom_kills without guessing the layout.
    cgroup_version: int | None = None


def find_memory_limit(override: str | None, env: Mapping[str, str], proc: str | os.PathLike = "/proc") -> MemoryLimit:
    """The limit to plan for: --memory-limit, then MEMORY_LIMIT, then the tightest cgroup limit.

    The cgroup directory is reported even when a flag or variable sets the limit, because usage and
    OOM counters still come from there. A blank MEMORY_LIMIT counts as unset (``-e MEMORY_LIMIT=``).
    """
    given = _given_limit(override, env)
    found = _own_cgroup(proc)
    if given is not None:
        cgroup = (found[1], found[0]) if found else (None, None)
        return MemoryLimit(given[1], given[0], *cgroup)
    if found is None:
        return MemoryLimit(None, _NO_CONTROLLER, None)
    version, directory, mount_point = found
    # A v2 cgroup without the memory controller enabled (or the v2 root) has no memory.max.
    if not os.path.exists(os.path.join(directory, _LIMIT_FILE[version])):
        return MemoryLimit(None, _NO_CONTROLLER, None)
    best: tuple[int, str] | None = None
    # An ancestor's limit binds us as well (the JVM reads it the same way), so take the smallest.
    level = directory
    while True:
        limit = read_limit(version, level)
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, os.path.join(level, _LIMIT_FILE[version]))
        if level == mount_point or os.path.dirname(level) == level:
            break
        level = os.path.dirname(level)
    if best is None:
        return MemoryLimit(None, "the cgroup says max", directory, version)
    return MemoryLimit(best[0], f"cgroup v{version} {best[1]}", directory, version)


def _given_limit(override: str | None, env: Mapping[str, str]) -> tuple[str, int] | None:
    """(where from, bytes) for a limit set by the flag or the variable; None when neither is set."""
    if override is not None:
        return "--memory-limit", _parse_setting("--memory-limit", override)
    value = env.get("MEMORY_LIMIT", "")
    if value.strip():
        return "MEMORY_LIMIT", _parse_setting("MEMORY_LIMIT", value)
    return None


def _parse_setting(name: str, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"{name} {value!r}: {_SIZE_HINT}") from None


def _own_cgroup(proc: str | os.PathLike) -> tuple[int, str, str] | None:
    self_cgroup, mountinfo = _read(os.path.join(proc, "self", "cgroup")), _read(os.path.join(proc, "self", "mountinfo"))
    if self_cgroup is None or mountinfo is None:
        return None
    return _locate_cgroup(self_cgroup, mountinfo)


def cgroup_memory_dir(self_cgroup: str, mountinfo: str) -> tuple[int, str] | None:
    """(cgroup version, directory of our memory cgroup) from /proc/self/cgroup and mountinfo texts.

    v1 is preferred when both exist: hybrid machines enforce memory limits through v1.
    """
    found = _locate_cgroup(self_cgroup, mountinfo)
    return (found[0], found[1]) if found else None


def _locate_cgroup(self_cgroup: str, mountinfo: str) -> tuple[int, str, str] | None:
    """Like cgroup_memory_dir, plus the mount point, where the walk up to parents must stop."""
    paths: dict[int, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if "memory" in controllers.split(","):
            paths[1] = path
        elif hierarchy == "0" and not controllers:
            paths[2] = path
    mounts: dict[int, list[tuple[str, str]]] = {1: [], 2: []}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        # Optional fields (shared:N, master:N) vary in number; "-" separates them from fstype.
        dash = fields.index("-", 6)
        if len(fields) < dash + 4:
            continue
        fstype, super_options = fields[dash + 1], fields[dash + 3]
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup" and "memory" in super_options.split(","):
            mounts[1].append((root, mount_point))
        elif fstype == "cgroup2":
            mounts[2].append((root, mount_point))
    for version in (1, 2):
        if version in paths and mounts[version]:
            return (version, *_join(paths[version], mounts[version]))
    return None


def _join(path: str, mounts: list[tuple[str, str]]) -> tuple[str, str]:
    """Our cgroup's directory under the mount that shows it, and that mount point (os.path, not
    pathlib: pathlib would cost PID 1 half a megabyte for the rest of its life)."""
    for root, mount_point in mounts:
        # ".." appears when our cgroup lies outside a cgroup namespace's root: not under any mount.
        if ".." in path.split("/"):
            continue
        inside = os.path.relpath(path, root)
        if inside == "." or not inside.startswith(".."):
            return os.path.normpath(os.path.join(mount_point, inside)), mount_point
    return mounts[0][1], mounts[0][1]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 and so on)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_limit(version: int, directory: str | os.PathLike) -> int | None:
    """The cgroup's own memory limit in bytes; None when it has none or cannot be read."""
    text = _read(os.path.join(directory, _LIMIT_FILE[version]))
    if text is None or not text.isdigit():
        return None
    value = int(text)
    return value if value < _UNLIMITED else None


def read_usage(version: int, directory: str | os.PathLike) -> int | None:
    """Bytes the cgroup is charged for (page cache included, as the OOM killer counts it)."""
    text = _read(os.path.join(directory, _USAGE_FILE[version]))
    return int(text) if text is not None and text.isdigit() else None


def read_oom_kills(version: int, directory: str | os.PathLike) -> int:
    """How many processes the kernel's OOM killer has killed in the cgroup (0 if not reported)."""
    text = _read(os.path.join(directory, _EVENTS_FILE[version])) or ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _read(file: str) -> str | None:
    try:
        with open(file) as opened:
            return opened.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


class Footprint(NamedTuple):
    """A process's memory in bytes: its proportional share (PSS), what it alone holds, all it holds."""

    pss: int  # shared pages count divided among the processes sharing them
    private: int  # pages no other process shares (USS): what one more such process costs
    rss: int = 0  # every page it has resident, shared or not

    def __add__(self, other: tuple) -> Footprint:  # type: ignore[override]
        return Footprint(self.pss + other[0], self.private + other[1], self.rss + other[2])


def read_footprint(pid: int, proc: str | os.PathLike = "/proc") -> Footprint | None:
    """PSS, private and resident bytes from smaps_rollup (Linux 4.14+, one cheap read), else smaps summed."""
    text = _read(os.path.join(proc, str(pid), "smaps_rollup")) or _read(os.path.join(proc, str(pid), "smaps"))
    if text is None:
        return None
    kib = {"Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0, "Rss:": 0}
    found = False
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key in kib:
            kib[key] += int(rest.split()[0])
            found = found or key == "Pss:"
    if not found:
        return None
    return Footprint(kib["Pss:"] * 1024, (kib["Private_Clean:"] + kib["Private_Dirty:"]) * 1024, kib["Rss:"] * 1024)


def read_pss(pid: int, proc: str | os.PathLike = "/proc") -> int | None:
    """Proportional set size in bytes: shared pages count divided among the processes sharing them."""
    found = read_footprint(pid, proc)
    return None if found is None else found.pss


class Tree(NamedTuple):
    """A process's own footprint and its descendants' (an RQ work-horse is a child of its worker)."""

    own: Footprint
    below: Footprint

    @property
    def pss(self) -> int:
        return self.own.pss + self.below.pss

    @property
    def private(self) -> int:
        return self.own.private + self.below.private


def tree_footprint(pid: int, index: Mapping[int, Sequence[int]], proc: str | os.PathLike = "/proc") -> Tree | None:
    """The footprint of pid and, apart, of all its descendants; None when pid is gone."""
    own = read_footprint(pid, proc)
    if own is None:
        return None
    below_it = Footprint(0, 0)
    for child in below(pid, index):
        below_it += read_footprint(child, proc) or Footprint(0, 0)
    return Tree(own, below_it)


def auto_worker_count(
    limit: int,
    headroom: float,
    manager_bytes: int,
    per_worker_bytes: int,
    min_count: int,
    max_count: int,
) -> int:
    """The most workers in [min_count, max_count] whose planned memory fits in headroom * limit.

    min_count is returned even when it does not fit: the operator asked for at least that many.
    """
    if min_count > max_count:
        raise ValueError(f"min_count {min_count} is above max_count {max_count}")
    if per_worker_bytes <= 0:
        return max_count
    budget = math.floor(headroom * limit) - manager_bytes
    fits = budget // per_worker_bytes if budget >= 0 else 0
    return max(min_count, min(fits, max_count))


def cpu_worker_count(cpus: int) -> int:
    """2 * cpus + 1: the CPU half of the Python buildpack's WEB_CONCURRENCY formula."""
    return 2 * max(cpus, 1) + 1


def steady_per_worker(samples: Sequence[int]) -> int:
    """A worker's footprint for planning: its peak, as a job's peak is what the limit must hold."""
    return max(samples, default=0)


def guard_fraction(headroom: float) -> float:
    """Where the pool guard acts: halfway between the headroom `auto` plans up to and the limit."""
    return (1 + headroom) / 2


def pick_for_pool_guard(
    usage: Mapping[int, int], total: int, limit: int, guard_fraction: float
) -> int | None:
    """The largest worker once the pool reaches guard_fraction of the limit, else None.

    Recycling it ourselves lets its job finish or fail cleanly, where the kernel's OOM killer would
    pick a victim at random moments, perhaps the manager.
    """
    if not usage or total < guard_fraction * limit:
        return None
    return max(usage, key=lambda worker: usage[worker])


def format_bytes(n: int) -> str:
    """Human size: "900 KiB", "512.0 MiB", "1.2 GiB"."""
    size = abs(n)
    if size < 1024:
        return f"{n} B"
    if size < 1024**2:
        return f"{n / 1024:.0f} KiB"
    for unit, scale in (("MiB", 1024**2), ("GiB", 1024**3)):
        if size < scale * 1024:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024**4:.1f} TiB"

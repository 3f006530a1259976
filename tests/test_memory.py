"""Tests for entrypoint.memory: pure decisions, fake /proc trees, and real cgroups and processes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroup_fixture import Cgroup

from entrypoint.memory import (
    MemoryLimit,
    auto_worker_count,
    cgroup_memory_dir,
    cpu_worker_count,
    find_memory_limit,
    format_bytes,
    parse_size,
    pick_for_pool_guard,
    read_limit,
    read_oom_kills,
    read_pss,
    read_usage,
    steady_per_worker,
    tree_footprint,
)
from entrypoint.reaper import children_index, process_table

MiB = 1024**2
GiB = 1024**3
ROOT = Path(__file__).resolve().parent.parent
V1_UNLIMITED = "9223372036854771712"

# ---------------------------------------------------------------- cgroup_memory_dir (pure)

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""
UNIFIED_MOUNT = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"


def test_v1_without_namespace_joins_the_full_host_path() -> None:
    self_cgroup = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
    assert cgroup_memory_dir(self_cgroup, V1_MOUNTS + UNIFIED_MOUNT) == (
        1,
        "/sys/fs/cgroup/memory/process_api/abc",
    )


def test_v2_docker_with_cgroup_namespace_is_the_mount_point() -> None:
    mountinfo = (
        "600 590 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime shared:9 - "
        "cgroup2 cgroup rw,nsdelegate,memory_recursiveprot\n"
    )
    assert cgroup_memory_dir("0::/\n", mountinfo) == (2, "/sys/fs/cgroup")


def test_v1_bind_mounted_sub_hierarchy_strips_the_mount_root() -> None:
    mountinfo = (
        "700 690 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - "
        "cgroup cgroup rw,memory\n"
        "701 690 0:33 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - "
        "cgroup cgroup rw,cpu,cpuacct\n"
    )
    self_cgroup = "12:cpu,cpuacct:/docker/abc\n8:memory:/docker/abc\n"
    assert cgroup_memory_dir(self_cgroup, mountinfo) == (1, "/sys/fs/cgroup/memory")
    deeper = "8:memory:/docker/abc/jobs\n"
    assert cgroup_memory_dir(deeper, mountinfo) == (1, "/sys/fs/cgroup/memory/jobs")


def test_path_outside_the_mount_root_falls_back_to_the_mount_point() -> None:
    mountinfo = "700 690 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    for path in ("/docker/abcdef", "/other", "/../.."):
        assert cgroup_memory_dir(f"8:memory:{path}\n", mountinfo) == (
            1,
            "/sys/fs/cgroup/memory",
        )


def test_combined_v1_controllers_and_escaped_mount_points() -> None:
    mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/memory\\040x rw shared:7 master:2 - "
        "cgroup cgroup rw,memory,hugetlb\n"
    )
    assert cgroup_memory_dir("4:hugetlb,memory:/a\n", mountinfo) == (
        1,
        "/sys/fs/cgroup/memory x/a",
    )


def test_hybrid_prefers_v1_memory() -> None:
    self_cgroup = "4:memory:/user.slice\n0::/user.slice/session-1.scope\n"
    assert cgroup_memory_dir(self_cgroup, V1_MOUNTS + UNIFIED_MOUNT) == (
        1,
        "/sys/fs/cgroup/memory/user.slice",
    )


def test_pure_v2_on_a_host() -> None:
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    assert cgroup_memory_dir("0::/user.slice/app.service\n", mountinfo) == (
        2,
        "/sys/fs/cgroup/user.slice/app.service",
    )


def test_no_memory_controller() -> None:
    assert cgroup_memory_dir("", "") is None
    assert cgroup_memory_dir("1:cpu:/\n", V1_MOUNTS) is None
    # The controller line without any matching mount is no controller we can read.
    assert cgroup_memory_dir("4:memory:/x\n", UNIFIED_MOUNT) is None


# ---------------------------------------------------------------- pure decisions


def test_auto_worker_count_never_overshoots() -> None:
    # 0.8 * 1000 = 800 bytes; the manager takes 100, leaving 700 = 3 workers of 200.
    assert auto_worker_count(1000, 0.8, 100, 200, 1, 10) == 3
    assert auto_worker_count(1000, 0.8, 0, 200, 1, 10) == 4
    assert auto_worker_count(512 * MiB, 0.9, 60 * MiB, 100 * MiB, 1, 16) == 4


def test_auto_worker_count_bounds() -> None:
    assert auto_worker_count(1000, 1.0, 0, 1, 1, 10) == 10
    assert auto_worker_count(1000, 0.5, 900, 200, 2, 10) == 2
    assert auto_worker_count(1000, 0.5, 100, 10_000, 1, 10) == 1
    assert auto_worker_count(1000, 1.0, 0, 1000, 0, 5) == 1
    assert auto_worker_count(1000, 1.0, 0, 0, 1, 7) == 7
    assert auto_worker_count(1000, 1.0, 0, -5, 1, 7) == 7
    with pytest.raises(ValueError, match="min_count"):
        auto_worker_count(1000, 1.0, 0, 1, 5, 2)


def test_cpu_worker_count() -> None:
    assert cpu_worker_count(1) == 3
    assert cpu_worker_count(4) == 9
    assert cpu_worker_count(0) == 3


def test_steady_per_worker_is_the_peak() -> None:
    assert steady_per_worker([100, 300, 200]) == 300
    assert steady_per_worker([]) == 0


def test_pick_for_pool_guard() -> None:
    usage = {1: 100, 2: 500, 3: 300}
    assert pick_for_pool_guard(usage, 900, 1000, 0.9) == 2
    assert pick_for_pool_guard(usage, 899, 1000, 0.9) is None
    assert pick_for_pool_guard({}, 2000, 1000, 0.9) is None


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (900 * 1024, "900 KiB"),
        (512 * MiB, "512.0 MiB"),
        (int(1.2 * GiB), "1.2 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (-2 * MiB, "-2.0 MiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MiB),
        ("1G", GiB),
        ("1.5GiB", int(1.5 * GiB)),
        ("300mb", 300 * MiB),
        (" 2k ", 2048),
        ("1000", 1000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1M", "0", "1X", 0, -5])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# ---------------------------------------------------------------- find_memory_limit


def test_own_limit_is_the_tightest_limit_on_our_cgroup_path() -> None:
    """Checked against the files themselves: the smallest limit from our memory cgroup up through
    its parents, or none when every level says max (or v1's near-2^63)."""
    found = find_memory_limit(None, {})
    located = cgroup_memory_dir(*(Path("/proc/self", name).read_text() for name in ("cgroup", "mountinfo")))
    if located is None:
        assert found == MemoryLimit(None, "no cgroup memory controller found", None)
        return
    version, path = located
    directory = Path(path)
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    if not (directory / name).exists():  # the v2 root, or memory not delegated to our cgroup
        assert found == MemoryLimit(None, "no cgroup memory controller found", None)
        return
    limits = []
    for level in (directory, *directory.parents):
        text = (level / name).read_text().strip() if (level / name).exists() else "max"
        if text != "max" and int(text) < 2**62:
            limits.append((int(text), level / name))
    if limits:
        size, file = min(limits)
        assert found == MemoryLimit(size, f"cgroup v{version} {file}", path, version)
    else:
        assert found == MemoryLimit(None, "the cgroup says max", path, version)
    usage = read_usage(version, path)
    assert usage is not None and usage > 0, "our own cgroup is charged for our own memory"


def test_flag_beats_variable_beats_cgroup() -> None:
    found = find_memory_limit("512M", {"MEMORY_LIMIT": "1G"})
    assert (found.bytes, found.source) == (512 * MiB, "--memory-limit")
    found = find_memory_limit(None, {"MEMORY_LIMIT": "1G"})
    assert (found.bytes, found.source) == (GiB, "MEMORY_LIMIT")
    # The cgroup is still found, for usage and OOM counters.
    assert found.cgroup_dir == find_memory_limit(None, {}).cgroup_dir
    blank = find_memory_limit(None, {"MEMORY_LIMIT": " "})
    assert blank.source not in ("MEMORY_LIMIT", "--memory-limit")


@pytest.mark.parametrize(
    ("override", "env", "name"),
    [
        ("lots", {}, "--memory-limit"),
        ("", {"MEMORY_LIMIT": "1G"}, "--memory-limit"),
        (None, {"MEMORY_LIMIT": "1 gigabyte"}, "MEMORY_LIMIT"),
        (None, {"MEMORY_LIMIT": "0"}, "MEMORY_LIMIT"),
    ],
)
def test_bad_settings_name_the_setting(
    override: str | None, env: dict[str, str], name: str
) -> None:
    with pytest.raises(ValueError, match=name) as error:
        find_memory_limit(override, env)
    message = str(error.value)
    assert "\n" not in message
    assert "512M" in message


def _fake_proc(tmp_path: Path, self_cgroup: str, fstype: str, options: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(self_cgroup)
    mount = tmp_path / "cg"
    (proc / "self" / "mountinfo").write_text(
        f"35 31 0:32 / {mount} rw,relatime - {fstype} {fstype} {options}\n"
    )
    return proc


def test_a_parent_limit_binds_and_is_named(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "4:memory:/pod/app\n0::/\n", "cgroup", "rw,memory")
    mount = tmp_path / "cg"
    (mount / "pod" / "app").mkdir(parents=True)
    (mount / "memory.limit_in_bytes").write_text(V1_UNLIMITED + "\n")
    (mount / "pod" / "memory.limit_in_bytes").write_text(f"{512 * MiB}\n")
    (mount / "pod" / "app" / "memory.limit_in_bytes").write_text(f"{GiB}\n")
    found = find_memory_limit(None, {}, proc)
    assert found == MemoryLimit(
        512 * MiB,
        f"cgroup v1 {mount / 'pod' / 'memory.limit_in_bytes'}",
        str(mount / "pod" / "app"),
        1,
    )
    # Nothing above the mount point is read, even if it looks like a limit.
    (tmp_path / "memory.limit_in_bytes").write_text("1024\n")
    assert find_memory_limit(None, {}, proc).bytes == 512 * MiB


def test_v2_max_everywhere_means_no_limit(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "0::/app\n", "cgroup2", "rw,nsdelegate")
    mount = tmp_path / "cg"
    (mount / "app").mkdir(parents=True)
    (mount / "app" / "memory.max").write_text("max\n")
    (mount / "app" / "memory.current").write_text("12345\n")
    (mount / "app" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    found = find_memory_limit(None, {}, proc)
    assert found == MemoryLimit(None, "the cgroup says max", str(mount / "app"), 2)
    assert read_usage(2, mount / "app") == 12345
    assert read_oom_kills(2, mount / "app") == 2
    (mount / "app" / "memory.max").write_text(f"{256 * MiB}\n")
    assert find_memory_limit(None, {}, proc).bytes == 256 * MiB
    assert find_memory_limit(None, {}, proc).source == f"cgroup v2 {mount / 'app' / 'memory.max'}"


def test_v2_without_the_memory_controller(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "0::/app\n", "cgroup2", "rw")
    (tmp_path / "cg" / "app").mkdir(parents=True)
    assert find_memory_limit(None, {}, proc) == MemoryLimit(
        None, "no cgroup memory controller found", None
    )


def test_unreadable_proc_means_no_controller(tmp_path: Path) -> None:
    found = find_memory_limit(None, {}, tmp_path)
    assert found == MemoryLimit(None, "no cgroup memory controller found", None)


def test_limit_and_counter_readers(tmp_path: Path) -> None:
    (tmp_path / "memory.limit_in_bytes").write_text(V1_UNLIMITED + "\n")
    assert read_limit(1, tmp_path) is None
    (tmp_path / "memory.limit_in_bytes").write_text("268435456\n")
    assert read_limit(1, tmp_path) == 256 * MiB
    assert read_limit(2, tmp_path) is None
    assert read_usage(1, tmp_path) is None
    assert read_oom_kills(1, tmp_path) == 0
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert read_oom_kills(1, tmp_path) == 0
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    assert read_oom_kills(1, tmp_path) == 4


# ---------------------------------------------------------------- fake /proc for PSS


def test_pss_from_rollup_and_from_smaps(tmp_path: Path) -> None:
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "smaps_rollup").write_text(
        "00400000-7ffd [rollup]\nRss: 2000 kB\nPss: 1500 kB\nPss_Anon: 1000 kB\nSwapPss: 9 kB\n"
    )
    assert read_pss(10, tmp_path) == 1500 * 1024
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "smaps").write_text(
        "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\nPss: 100 kB\nSwapPss: 7 kB\n"
        "00651000-00652000 rw-p 00051000 08:02 173521 /usr/bin/x\nPss: 24 kB\n"
    )
    assert read_pss(11, tmp_path) == 124 * 1024
    assert read_pss(12, tmp_path) is None


def test_children_index_survives_odd_command_names(tmp_path: Path) -> None:
    stats = {1: "1 (init) S 0 1 1", 5: "5 (a) b) (c) R 1 5 5", 6: "6 (rq: horse 1) S 5 5 5"}
    for pid, stat in stats.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat + " 0 0 0\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "7").mkdir()  # gone between listing and reading
    assert children_index(process_table(tmp_path)) == {0: [1], 1: [5], 5: [6]}


def test_tree_pss_sums_descendants_and_tolerates_gone_ones(tmp_path: Path) -> None:
    for pid, kib in ((1, 10), (2, 20), (3, 30)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "smaps_rollup").write_text(f"Pss: {kib} kB\n")
    index = {1: [2, 9], 2: [3], 3: [1]}  # 9 is gone; 3 -> 1 is a stale, looping entry
    assert tree_footprint(1, index, tmp_path).pss == 60 * 1024
    assert tree_footprint(2, index, tmp_path).pss == 60 * 1024
    assert tree_footprint(9, index, tmp_path) is None
    assert tree_footprint(1, index, tmp_path).own.pss == 10 * 1024, "its own, apart from its descendants'"


# ---------------------------------------------------------------- real processes

ALLOCATE = """
import sys
block = bytearray({size})
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
sys.stdin.readline()
"""

PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), child.pid, flush=True)
sys.stdin.readline()
child.stdin.close()
child.wait(timeout=10)
"""


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from pid {process.pid} within {timeout} s")
    return process.stdout.readline()


@contextlib.contextmanager
def _started(*args: str, **options: object) -> Iterator[subprocess.Popen[str]]:
    """A python child in its own session, killed with everything it started on the way out."""
    process = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **options,  # type: ignore[call-overload]
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)


def test_real_pss_of_a_process_that_touched_64_mib() -> None:
    with _started("-c", ALLOCATE.format(size=64 * MiB)) as child:
        assert _read_line(child, 30).strip() == "ready"
        tree = tree_footprint(child.pid, children_index(process_table()))
        assert tree is not None
        assert 60 * MiB <= tree.pss < 200 * MiB
        assert tree.below == (0, 0, 0), "no children of its own: all of it is its own"


def test_real_tree_pss_includes_the_childs_memory() -> None:
    with _started("-c", PARENT, ALLOCATE.format(size=64 * MiB)) as parent:
        word, horse = _read_line(parent, 30).split()
        assert word == "ready"
        index = children_index(process_table())
        assert int(horse) in index[parent.pid]
        own = read_pss(parent.pid)
        tree = tree_footprint(parent.pid, index).pss
        assert own is not None
        assert tree is not None
        assert own < 60 * MiB
        assert tree >= own + 60 * MiB


def test_real_pss_of_a_gone_process_is_none() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert read_pss(int(done.stdout)) is None


# ---------------------------------------------------------------- real cgroups, v1 and v2


REPORT = """
import json, os, sys
from entrypoint.memory import find_memory_limit, read_usage
sys.stdin.readline()
found = find_memory_limit(None, {})
usage = read_usage(found.cgroup_version, found.cgroup_dir) if found.cgroup_dir else None
print(json.dumps({"bytes": found.bytes, "source": found.source, "version": found.cgroup_version,
                  "dir": str(found.cgroup_dir), "usage": usage}), flush=True)
"""


def _report_from_inside(group: Cgroup) -> dict:
    """What find_memory_limit says in a child that has joined `group`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEMORY_LIMIT", None)
    with _started("-c", REPORT, cwd=ROOT, env=env) as child:
        group.add(child.pid)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        return json.loads(_read_line(child, 30))


def test_real_child_in_a_256m_cgroup_finds_its_limit(memory_cgroup: Cgroup) -> None:
    memory_cgroup.limit_memory(256 * MiB)
    report = _report_from_inside(memory_cgroup)
    assert report["bytes"] == 256 * MiB
    assert report["source"] == f"cgroup v{memory_cgroup.version} {memory_cgroup.memory_limit_file}"
    assert report["version"] == memory_cgroup.version
    assert report["dir"] == str(memory_cgroup.path)
    assert isinstance(report["usage"], int)
    assert report["usage"] > 0
    assert read_limit(memory_cgroup.version, memory_cgroup.path) == 256 * MiB
    assert read_oom_kills(memory_cgroup.version, memory_cgroup.path) == 0


def test_real_child_below_a_tighter_parent_finds_the_parents_limit(memory_cgroup: Cgroup) -> None:
    memory_cgroup.limit_memory(192 * MiB)
    inner = memory_cgroup.child("inner")
    inner.limit_memory(GiB)
    report = _report_from_inside(inner)
    assert (report["bytes"], report["source"]) == (
        192 * MiB, f"cgroup v{memory_cgroup.version} {memory_cgroup.memory_limit_file}")
    assert report["dir"] == str(inner.path), "usage and OOM kills still come from our own group"


def test_real_oom_kill_is_counted(memory_cgroup: Cgroup) -> None:
    events = memory_cgroup / ("memory.oom_control" if memory_cgroup.version == 1 else "memory.events")
    if "oom_kill " not in events.read_text():
        pytest.skip(f"{events.name} has no oom_kill line on this kernel (added in Linux 4.13)")
    memory_cgroup.limit_memory(64 * MiB)
    hog = "import sys; sys.stdin.readline(); b = bytearray(256 << 20)\n" + (
        "for i in range(0, len(b), 4096): b[i] = 1\n"
    )
    with _started("-c", hog) as child:
        memory_cgroup.add(child.pid)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == -signal.SIGKILL
    assert read_oom_kills(memory_cgroup.version, memory_cgroup.path) == 1

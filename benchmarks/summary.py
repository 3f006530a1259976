"""benchmarks/RESULTS.md: the machine, the method, every table, and where we lose and why."""

from __future__ import annotations

import re

from harness import ROOT
from report import DASH, TIMES, markdown_table

VENV = re.compile(r"/tmp/entrypoint-bench-[^/ ]+/venv")


def _median(results: dict, bench: str, contender: str, metric: str) -> float | None:
    summary = results["benchmarks"].get(bench, {}).get("contenders", {}).get(contender, {})
    value = summary.get("metrics", {}).get(metric) if summary else None
    return value["median"] if isinstance(value, dict) else None


def markdown(results: dict) -> str:
    meta = results["meta"]
    box = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (took {meta['duration_s']:.0f} s).",
        "",
        f"- Machine: {box['nproc']} CPUs ({box['cpu_model']}), kernel {box['kernel']}, "
        f"{box['distro']}, Python {box['python']}; 1-minute load average "
        f"{meta['loadavg_1min']['start']:.2f} at the start, {meta['loadavg_1min']['end']:.2f} "
        "at the end (other work shared the machine: the min-max ranges show its noise).",
        f"- Sizes: {meta['sizes']['orphans']:,} orphans, {meta['sizes']['signals']:,} signals, "
        f"{meta['sizes']['workers']} pool workers, {meta['sizes']['idle']:g} s idle window.",
        "- Versions: " + ", ".join(f"{k} `{v}`" for k, v in meta["versions"].items()) + ".",
        f"- entrypoint ran from {meta['entrypoint_from']}; .pth files there: "
        f"{', '.join(meta.get('venv_pth_files', meta.get('site_pth_files', []))) or 'none'}.",
        "",
        "## Method",
        "",
        f"Every figure is the median of {meta['runs']} runs (start-up: "
        f"{meta['startup_rounds']} launches) with (min{DASH}max). Contenders are measured in "
        "alternation - A, B, C, A, B, C... - never A five times then B five times, so drift "
        "of the machine falls on all of them alike. **ours ÷** is entrypoint's median divided "
        "by that row's median, from the same run: every metric is lower-is-better, so above "
        "1 entrypoint is slower or bigger. *floor* rows are baselines, not competitors: "
        "`none` is the child alone; `python floor` is `benchmarks/probes/min_init.py` under "
        "`python -I -S` (block signals, posix_spawn, a sigwaitinfo loop: the least any Python "
        "init can cost).",
        "",
        "Why a clean venv: this machine's site-packages holds .pth files (one imports "
        "certifi at every interpreter start), which add ~15 ms and several MB to any Python "
        "program that does not run with -I/-S. A user's image normally does not have them, so "
        "entrypoint - and supervisord and honcho, for fairness - run from a venv created with "
        "`python -m venv --without-pip` holding only `pip install --no-deps` of this checkout, "
        "the dependencies pyproject.toml lists, supervisor and honcho.",
        "",
    ]
    lines += contenders(results)
    for bench in results["benchmarks"].values():
        lines.append(f"## {bench.get('title', '?')}")
        lines.append("")
        if "error" in bench:
            lines += [f"Not measured: `{bench['error']}`", ""]
            continue
        lines += [bench["description"], "", markdown_table(bench), ""]
    lines += losses(results)
    return "\n".join(lines).rstrip() + "\n"


def contenders(results: dict) -> list[str]:
    """Each contender's command line and notes, once (the tables only name them)."""
    lines = ["## Contenders", ""]
    seen = set()
    for bench in results["benchmarks"].values():
        for name, contender in bench.get("contenders", {}).items():
            command = VENV.sub("<venv>", contender["command"]).replace(f"{ROOT}/", "")
            if (name, command) in seen:
                continue
            seen.add((name, command))
            text = f"- **{name}** ({contender['kind']})"
            if command:
                text += f": `{command}`"
            if contender["note"]:
                text += f" - {VENV.sub('<venv>', contender['note'])}"
            lines.append(text)
    return [*lines, ""] if seen else []


def losses(results: dict) -> list[str]:
    """Every metric where a peer beats entrypoint by more than 5%, then why."""
    lines = ["## Where entrypoint loses, and why", ""]
    for bench in results["benchmarks"].values():
        if "error" in bench:
            continue
        for metric in bench["metrics"]:
            beaten = [f"{ratio:.2f}{TIMES} {name}"
                      for name, ratio in bench["ratios"][metric["key"]].items()
                      if bench["contenders"][name]["kind"] == "peer"
                      and ratio is not None and ratio > 1.05]
            if beaten:
                lines.append(f"- {bench['title']} - {metric['label']}: {', '.join(beaten)}")
    if len(lines) == 2:
        lines.append("- nowhere (no peer is more than 5% better on any metric)")
    lines.append("")
    lines += explanations(results)
    return lines


def _best_peer(results: dict, bench: str, metric: str) -> tuple[str, float] | None:
    contenders = results["benchmarks"].get(bench, {}).get("contenders", {})
    found = [(value["median"], name) for name, c in contenders.items() if c["kind"] == "peer"
             and isinstance(value := c["metrics"].get(metric), dict)]
    if not found:
        return None
    median, name = min(found)
    return name, median


def _verdict(mib: float, goal_mib: float) -> str:
    return "meets" if mib <= goal_mib else "misses"


def _top_modules(profile: dict, count: int, *, skip: tuple[str, ...] = ()) -> str:
    picked = [f"{entry['module'].strip()} {entry['cumulative_ms']:.1f} ms"
              for entry in profile.get("top_ms", [])
              if not entry["module"].strip().startswith(skip)][:count]
    return ", ".join(picked)


def explanations(results: dict) -> list[str]:
    """What the floors and profiles say, with this run's numbers."""
    out: list[str] = []
    def m(bench: str, who: str, metric: str) -> float | None:
        return _median(results, bench, who, metric)

    benches = results["benchmarks"]

    ours_exec, floor_exec = m("startup", "entrypoint", "exec_ms"), m("startup", "python floor",
                                                                      "exec_ms")
    ours_wall, floor_wall = m("startup", "entrypoint", "wall_ms"), m("startup", "python floor",
                                                                      "wall_ms")
    best = _best_peer(results, "startup", "exec_ms")
    if None not in (ours_exec, floor_exec, ours_wall, floor_wall) and best:
        profile = benches["startup"].get("extra", {}).get("import_profile", {})
        total = profile.get("total_import_ms")
        out += [
            "**Start-up - Python's start-up cost, and our imports on top of it.** "
            f"The floor: a Python init that imports nothing (`python -I -S`, "
            f"probes/min_init.py) has its child running after {floor_exec:.1f} ms and exits "
            f"{floor_wall:.1f} ms after launch; {best[0]}, the fastest C init, needs "
            f"{best[1]:.1f} ms. No CPython init can get under that floor. entrypoint needs "
            f"{ours_exec:.1f} ms to exec its child: {ours_exec - floor_exec:.1f} ms above the "
            "floor, spent mostly importing its modules"
            + (f" (`python -X importtime`, in separate runs: {total:.1f} ms in all; the "
               f"largest: {_top_modules(profile, 7)})" if total else "")
            + f". After the child exits it needs {ours_wall - ours_exec:.1f} ms to exit, the "
            f"floor {floor_wall - floor_exec:.1f} ms: entrypoint looks for leftover "
            "descendants by reading every /proc/PID/stat (twice), which here - launched "
            "directly, not as PID 1 of a namespace - means every process on the host, and "
            "the interpreter has more modules to tear down.",
            "",
        ]
    ours_rss, floor_rss = m("memory", "entrypoint", "rss_mb"), m("memory", "python floor",
                                                                  "rss_mb")
    best = _best_peer(results, "memory", "rss_mb")
    if None not in (ours_rss, floor_rss) and best:
        pools = [(name, value["median"]) for name, contender in benches["memory"]["contenders"].items()
                 if name.startswith("entrypoint pool")
                 and isinstance(value := contender["metrics"].get("rss_mb"), dict)]
        out += [
            "**Memory - the interpreter is the floor.** "
            f"A bare `python -I -S` init holds {floor_rss:.1f} MiB; entrypoint's init "
            f"{ours_rss:.1f} MiB ({ours_rss - floor_rss:+.1f} MiB: the modules it imports), "
            f"which {_verdict(ours_rss, 12)} the goal of at most 12 MiB"
            + "".join(f"; the {name.removeprefix('entrypoint ')} {rss:.1f} MiB, which "
                      f"{_verdict(rss, 15)} the goal of at most 15 MiB" for name, rss in pools)
            + f"; {best[0]} needs {best[1]:.2f} MiB. Any Python init loses here by the size of the "
            "interpreter. The pool reads its config in a short-lived child, so PID 1 never holds "
            "PyYAML or python-dotenv.",
            "",
        ]
    ours_p50, floor_p50 = m("signals", "entrypoint", "p50_us"), m("signals", "python floor",
                                                                   "p50_us")
    best = _best_peer(results, "signals", "p50_us")
    if None not in (ours_p50, floor_p50) and best:
        cprofile = benches["signals"].get("extra", {}).get("cprofile", {})
        top = ", ".join(f"{row['function']} {row['self_us_per_signal']:.1f}"
                        for row in cprofile.get("top_self", [])[:6])
        out += [
            "**Signal forwarding - partly Python, partly our code per signal.** "
            f"p50 {ours_p50:.1f} µs against {best[1]:.1f} µs for {best[0]}; the minimal "
            f"Python init forwards in {floor_p50:.1f} µs, so "
            + (f"{ours_p50 - floor_p50:.1f} µs of the gap is entrypoint's own Python run per "
               "signal (its select loop, the signalfd read, its decisions and log calls) and "
               "the rest is the interpreter" if ours_p50 > floor_p50 * 1.05 else
               "entrypoint is at the Python floor: the gap is the interpreter's")
            + (f"; cProfile, self time in µs per signal (with profiler overhead; kill() "
               f"includes waking the child): {top}" if top else "")
            + ". Tens of microseconds matter little for a stop signal, but this is our "
            "code, not the interpreter's start-up.",
            "",
        ]
    if "reaping" in benches and "error" not in benches["reaping"]:
        ratios = [r for name, r in benches["reaping"]["ratios"]["reaped_ms"].items()
                  if r is not None and benches["reaping"]["contenders"][name]["kind"] == "peer"]
        if ratios:
            out += [
                "**Reaping** - entrypoint is within "
                f"{min(ratios):.2f}-{max(ratios):.2f}{TIMES} of the C inits: the time is set "
                "by how fast the child can fork, every init keeps up, and what is left after "
                "the last fork is reaped within a few milliseconds. 'after last fork' and "
                "'peak zombies' are at the resolution of the 2 ms sampling: differences there "
                "are noise, not a ranking.",
                "",
            ]
    start, idle = benches.get("pool_start", {}), benches.get("pool_idle", {})
    if start and "error" not in start and idle and "error" not in idle:
        ours_rss = m("pool_idle", "entrypoint", "rss_mb")
        honcho_rss = m("pool_idle", "honcho", "rss_mb")
        honcho_tree = m("pool_idle", "honcho", "tree_pss_mb")
        profile = start.get("extra", {}).get("import_profile", {})
        if None not in (ours_rss, honcho_rss, honcho_tree) and ours_rss > honcho_rss:
            loaded = {e["module"].strip().split(".")[0] for e in profile.get("top_ms", [])}
            heavy = [text for module, text in (("yaml", "PyYAML (the config)"),
                                              ("rich", "rich (log lines, even when stdout "
                                               "is not a terminal)")) if module in loaded]
            out += [
                "**Pool manager RSS against honcho's manager process.** honcho's main "
                f"process holds {honcho_rss:.1f} MiB against our {ours_rss:.1f} MiB, but it "
                "runs a Python helper and a /bin/sh per worker: its whole tree is "
                f"{honcho_tree:.0f} MiB Pss. Above the init's own modules our manager "
                "imports " + (" and ".join(heavy) or "its pool modules")
                + (f"; `python -X importtime` of the pool: {_top_modules(profile, 6)}"
                   if profile else "") + ".",
                "",
            ]
    def lost(metric: str) -> list[str]:
        return [name for name, ratio in start.get("ratios", {}).get(metric, {}).items()
                if ratio and ratio > 1.05 and start["contenders"][name]["kind"] == "peer"]

    twin = m("pool_start", "entrypoint (backoff_reset 1s)", "start_s")
    ours_start = m("pool_start", "entrypoint", "start_s")
    beaten_by = sorted(set(lost("start_s")) | set(lost("start_cpu_ms")))
    if beaten_by and ours_start is not None:
        profile = start.get("extra", {}).get("import_profile", {})
        total = profile.get("total_import_ms")
        out += [
            f"**Pool start and start CPU against {', '.join(beaten_by)}.** "
            + (f"The same program with another backoff setting started in {twin:.3f} s "
               f"against {ours_start:.3f} s in this run, which measures the noise. "
               if twin is not None and lost("start_s") else "")
            + "What is ours: the manager imports "
            + (f"for {total:.0f} ms " if total else "")
            + f"({_top_modules(profile, 4)}) before its first fork, then starts workers "
            "strictly one after "
            "another - spawn() forks the ~19 MiB interpreter and waits on a close-on-exec "
            "pipe until the worker's exec succeeded before the next fork - while honcho's "
            "manager only forks and its helpers exec their shells and workers in parallel on "
            "both cores. The start CPU is the same story: imports plus one fork of the whole "
            "interpreter per worker (about 1 ms each here).",
            "",
        ]
    ours, tuned = m("restart", "entrypoint", "restart_ms"), m(
        "restart", "entrypoint (backoff_reset 1s)", "restart_ms")
    supervisor = m("restart", "supervisord", "restart_ms")
    if None not in (ours, tuned):
        out += [
            "**Restart.** A worker's first quick exit is replaced at once (only a second quick "
            "exit in a row starts the backoff: `backoff_min`, doubling, up to `backoff_max`), "
            f"so the replacement runs after {ours:.1f} ms; with `backoff_reset: 1` (what "
            f"supervisord's startsecs=1 means) after {tuned:.1f} ms"
            + (f"; supervisord needs {supervisor:.0f} ms: its main loop polls with a 1 s "
               "timeout that SIGCHLD does not cut short (PEP 475 retries the poll), so it "
               "sees the exit on its next tick - the same tick makes its stop take about a "
               "second" if supervisor is not None else "")
            + ".",
            "",
        ]
    return out

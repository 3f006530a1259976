"""Output: the terminal table (rich, imported only here), and the markdown summary."""

from __future__ import annotations

import sys

DASH = "\u2013"  # en dash, for ranges
TIMES = "\u00d7"  # multiplication sign, for ratios


def value_text(summary, digits: int) -> str:
    if summary == "n/a":
        return "n/a"
    if not summary:
        return "failed"
    low, high = f"{summary['min']:.{digits}f}", f"{summary['max']:.{digits}f}"
    text = f"{summary['median']:.{digits}f} ({low}{DASH}{high})"
    if summary.get("failed"):
        text += f" [{summary['failed']} failed]"
    return text


def ratio_text(ratio: float | None, contender: str, ours: str) -> str:
    if contender == ours:
        return "1"
    if ratio is None:
        return "—"
    return f"{ratio:.2f}{TIMES}"


def rows(bench: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one benchmark's table: each metric's median (min-max), then the
    ratio ours ÷ this row."""
    header = ["", "kind"]
    for metric in bench["metrics"]:
        unit = f" ({metric['unit']})" if metric["unit"] else ""
        header += [f"{metric['label']}{unit}", "ours ÷"]
    cells = []
    for name, contender in bench["contenders"].items():
        row = [name, contender["kind"]]
        for metric in bench["metrics"]:
            summary = contender["metrics"].get(metric["key"])
            row.append(value_text(summary, metric["digits"]))
            ratio = bench["ratios"][metric["key"]].get(name)
            row.append("—" if summary == "n/a" else ratio_text(ratio, name, bench["ours"]))
        cells.append(row)
    return header, cells


def markdown_table(bench: dict) -> str:
    header, cells = rows(bench)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def print_tables(results: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # no rich: the same tables as markdown
        for bench in results["benchmarks"].values():
            if "error" in bench:
                print(f"{bench.get('title', '?')}: ERROR {bench['error']}")
                continue
            print(f"\n{bench['title']}\n{markdown_table(bench)}")
        return
    console = Console(file=sys.stdout, width=240)
    for name, bench in results["benchmarks"].items():
        if "error" in bench:
            console.print(f"[bold red]{name}: {bench['error']}[/]")
            continue
        header, cells = rows(bench)
        table = Table(title=bench["title"], title_justify="left")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for row in cells:
            style = "bold" if row[0] == bench["ours"] else ("dim" if row[1] == "floor" else None)
            table.add_row(*row, style=style)
        console.print(table)
    meta = results["meta"]
    console.print(f"ratio = {meta['ours']} ÷ that row (median ÷ median, same run); "
                  "> 1 means entrypoint is slower or bigger. "
                  f"Took {meta['duration_s']:.0f} s.")

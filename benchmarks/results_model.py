"""The shape of one benchmark's results: metrics, contenders, samples, summaries and ratios."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import Contender, summarize


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    digits: int = 1  # decimals shown in tables


@dataclass
class Benchmark:
    """Samples per contender and metric, collected round by round (contenders in alternation)."""

    name: str
    title: str
    description: str
    metrics: list[Metric]
    contenders: list[Contender]
    ours: str = "entrypoint"
    notes: list[str] = field(default_factory=list)
    samples: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    not_applicable: dict[str, set[str]] = field(default_factory=dict)  # contender -> metric keys

    def add(self, contender: str, metric: str, value: float | None) -> None:
        self.samples.setdefault(contender, {}).setdefault(metric, []).append(value)

    def mark_not_applicable(self, contender: str, metric: str) -> None:
        self.not_applicable.setdefault(contender, set()).add(metric)

    def to_json(self) -> dict:
        summaries: dict[str, dict] = {}
        for contender in self.contenders:
            per_metric = {}
            for metric in self.metrics:
                if metric.key in self.not_applicable.get(contender.name, set()):
                    per_metric[metric.key] = "n/a"
                    continue
                per_metric[metric.key] = summarize(
                    self.samples.get(contender.name, {}).get(metric.key, [])
                )
            summaries[contender.name] = {
                "kind": contender.kind,
                "command": contender.display or " ".join(contender.command(["CHILD..."])),
                "note": contender.note,
                "metrics": per_metric,
            }
        ratios: dict[str, dict[str, float | None]] = {}
        ours = summaries.get(self.ours, {}).get("metrics", {})
        for metric in self.metrics:
            mine = ours.get(metric.key)
            row = {}
            for name, summary in summaries.items():
                other = summary["metrics"].get(metric.key)
                if isinstance(mine, dict) and isinstance(other, dict) and other["median"]:
                    row[name] = mine["median"] / other["median"]
                else:
                    row[name] = None
            ratios[metric.key] = row
        return {
            "title": self.title,
            "description": self.description,
            "ours": self.ours,
            "metrics": [vars(m) for m in self.metrics],
            "contenders": summaries,
            "ratios": ratios,
            "ratio_meaning": f"{self.ours} median / this contender's median (lower is better "
            "for every metric, so > 1 means we lose)",
            "notes": self.notes,
            **({"extra": self.extra} if self.extra else {}),
        }

"""What a phase of a bench cost: CPU seconds per process (from /proc) and the dev server's billable
actions (its Prometheus `action` counter), read before and after, divided per turn."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTION_METRIC = "action"  # what the dev server counts as billable actions (Temporal Cloud's unit)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": field 3 (state) is index 0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_counter(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of `metric` in Prometheus text format, by its (sorted) labels."""
    samples: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != metric:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        samples[labels] = samples.get(labels, 0.0) + float(match.group(3))
    return samples


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


@dataclass
class Reading:
    """What every process has spent so far, and the server's action counter so far."""

    at: float
    cpu_s: dict[str, float]
    actions: dict[tuple[tuple[str, str], ...], float]


@dataclass
class Probe:
    pids: dict[str, int]
    metrics_port: int
    action_labels_seen: set[str] = field(default_factory=set)

    def read(self) -> Reading:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        actions = parse_counter(scrape(self.metrics_port), ACTION_METRIC)
        for labels in actions:
            self.action_labels_seen.update(name for name, _ in labels)
        return Reading(time.perf_counter(), cpu, actions)


def action_type(labels: tuple[tuple[str, str], ...]) -> str:
    named = dict(labels)
    return named.get("action_type") or named.get("type") or ",".join(f"{k}={v}" for k, v in labels)


def phase_costs(before: Reading, after: Reading, turns: int) -> dict[str, Any]:
    """CPU ms per turn of each process and actions per turn (total, by namespace, by type)."""
    cpu_ms = {
        name: round((after.cpu_s[name] - before.cpu_s[name]) * 1000 / turns, 2)
        for name in after.cpu_s
    }
    delta = {
        labels: value - before.actions.get(labels, 0.0) for labels, value in after.actions.items()
    }
    by_type: dict[str, float] = {}
    by_namespace: dict[str, float] = {}
    for labels, value in delta.items():
        if value <= 0:
            continue
        by_type[action_type(labels)] = by_type.get(action_type(labels), 0.0) + value
        namespace = dict(labels).get("namespace", "?")
        by_namespace[namespace] = by_namespace.get(namespace, 0.0) + value
    total = sum(by_type.values())
    return {
        "turns": turns,
        "cpu_ms_per_turn": cpu_ms,
        "cpu_ms_per_turn_total": round(sum(cpu_ms.values()), 2),
        "actions_per_turn": round(total / turns, 2),
        "actions_per_turn_by_type": {
            kind: round(value / turns, 2)
            for kind, value in sorted(by_type.items(), key=lambda item: -item[1])
        },
        "actions_per_turn_by_namespace": {
            ns: round(value / turns, 2)
            for ns, value in sorted(by_namespace.items(), key=lambda item: -item[1])
        },
    }

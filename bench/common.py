"""Shared bench plumbing: an embedded dev server with every team service, and percentile maths."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from infrastructure.dev_server import embedded_server
from infrastructure.setup import EndpointDefinition
from shared.manifest import discover_teams
from shared.nexus import DEFAULT_FAST_PATH_BUDGET
from shared.worker import build_manifest_worker

RESULTS_DIR = Path(__file__).parent / "results"
FAST_PATH_BUDGET = DEFAULT_FAST_PATH_BUDGET


@asynccontextmanager
async def bench_stack(
    extra_endpoints: list[EndpointDefinition] = (),  # type: ignore[assignment]
) -> AsyncIterator[tuple[dict[str, Client], AsyncExitStack]]:
    """A dev server with namespaces, endpoints, and every team's worker (one per manifest)
    running in-process.

    Yields per-namespace clients and the exit stack, so a bench can add workers of its own.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    async with AsyncExitStack() as exit_stack:
        _, clients = await exit_stack.enter_async_context(embedded_server(extra_endpoints))
        for team in discover_teams():
            worker = await build_manifest_worker(
                clients[team.namespace], team, fast_path_budget=FAST_PATH_BUDGET
            )
            await exit_stack.enter_async_context(worker)
        yield clients, exit_stack


def fake_model_orchestrator(
    client: Client, task_queue: str, model_url: str, **settings: Any
) -> Worker:
    """The real orchestrator worker, its model the 0 ms fake, its store a throw-away SQLite file."""
    from orchestrator.config import LLMSettings, OrchestratorSettings
    from orchestrator.worker import build_orchestrator_worker

    store = f"sqlite:///{tempfile.mkdtemp(prefix='bench-store-')}/conversations.db"
    return build_orchestrator_worker(
        client,
        task_queue=task_queue,
        # tool_endpoints defaults to every team manifest's endpoint: the teams bench_stack runs.
        settings=OrchestratorSettings(store_url=store, **settings),
        llm_settings=LLMSettings(
            model="openai/fake-model",
            api_base=f"{model_url}/v1",
            api_key="sk-bench",
            timeout_seconds=10,
            temperature=0,
        ),
    )


async def start_worker(exit_stack: AsyncExitStack, worker: Worker) -> None:
    await exit_stack.enter_async_context(worker)


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lower, upper = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (k - lower)


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 50), 1),
        "p95_ms": round(percentile(samples, 95), 1),
        "mean_ms": round(statistics.fmean(samples), 1) if samples else float("nan"),
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path

"""`make bench`: what disclosing tools on demand saves on a 200-tool catalog.

Three synthetic teams (tests/support/catalog_lab.py: 200 tools with realistic schemas, each team
in its own namespace with its own Nexus endpoint and worker) and the real orchestrator worker, its
model the offline router behind an OpenAI-compatible HTTP endpoint in this process
(tests/support/catalog_lab_model.py), so every step goes through LiteLLM over HTTP and the
request is measured as the provider receives it: bytes, and tokens as LiteLLM counts them for
gpt-4o (messages and tools). The task needs one tool of the 200. Run with disclosure on (the
defaults: past 40 tools or ~6000 tokens of schemas) and off (both thresholds 0), turns
interleaved; the prompt figures are the first conversation's of each mode (the router is
deterministic), the latency the p50 over `BENCH_DISCLOSURE_TURNS` conversations.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

from bench.common import save, start_worker, summarise
from infrastructure.dev_server import embedded_server
from orchestrator.client import ConversationClient
from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.models import TurnResult
from orchestrator.worker import build_orchestrator_worker
from shared.log import configure_logging
from tests.support.catalog_lab import (
    ENDPOINTS,
    TARGET_ASSET,
    TARGET_REQUEST,
    TARGET_SERVICE,
    TARGET_TOOL,
    catalog_teams,
    change_ticket,
)
from tests.support.catalog_lab_model import OfflineRouterServer, PromptSize

TURNS = int(os.environ.get("BENCH_DISCLOSURE_TURNS", "5"))
MODES: dict[str, dict[str, Any]] = {
    "on": {},  # the defaults
    "off": {"disclose_tools_over_count": 0, "disclose_tools_over_tokens": 0},
}


def figures(result: TurnResult, sizes: list[PromptSize], seconds: float) -> dict[str, Any]:
    first = sizes[0]
    ticket = change_ticket(TARGET_SERVICE, TARGET_TOOL, TARGET_ASSET)
    return {
        "completed": result.ok and ticket in result.answer,
        "calls": [call.name for call in result.tool_calls],
        "model_steps": len(sizes),
        "first_step_tools": first.tools,
        "first_step_tokens": first.tokens,
        "first_step_bytes": first.bytes,
        "total_prompt_tokens": sum(size.tokens for size in sizes),
        "total_prompt_bytes": sum(size.bytes for size in sizes),
        "turn_seconds": round(seconds, 3),
    }


async def main() -> int:
    configure_logging(level=os.environ.get("LOG_LEVEL", "WARNING"))
    store = f"sqlite:///{tempfile.mkdtemp(prefix='bench-disclosure-')}/conversations.db"
    router = OfflineRouterServer()
    router.start()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        async with embedded_server() as (_, clients), catalog_teams(clients["orchestrator"]):
            client = clients["orchestrator"]
            senders: dict[str, ConversationClient] = {}
            async with AsyncExitStack() as workers:
                for mode, settings in MODES.items():
                    task_queue = f"bench-disclosure-{mode}"
                    worker = build_orchestrator_worker(
                        client,
                        task_queue=task_queue,
                        settings=OrchestratorSettings(
                            store_url=store, tool_endpoints=ENDPOINTS, **settings
                        ),
                        llm_settings=LLMSettings(
                            model="openai/fake-model",
                            api_base=f"{router.url}/v1",
                            api_key="sk-bench",
                            timeout_seconds=60,
                            temperature=0,
                        ),
                    )
                    await start_worker(workers, worker)
                    senders[mode] = ConversationClient(client, task_queue)
                for _ in range(TURNS):
                    for mode, sender in senders.items():
                        router.reset()
                        started = time.perf_counter()
                        result = await sender.send(
                            f"bench-disclosure-{mode}-{uuid.uuid4().hex[:8]}", TARGET_REQUEST
                        )
                        seconds = time.perf_counter() - started
                        runs[mode].append(figures(result, router.prompt_sizes(), seconds))
    finally:
        router.stop()

    report = {mode: runs[mode][0] for mode in MODES}
    for mode in MODES:
        report[mode]["completed"] = all(run["completed"] for run in runs[mode])
        report[mode]["turn_ms"] = summarise([run["turn_seconds"] * 1000 for run in runs[mode]])
    print(f"{TARGET_REQUEST!r} against {len(ENDPOINTS)} teams' 200 tools (tokens: gpt-4o's)")
    print(
        f"{'disclosure':10} {'done':>5} {'steps':>5} {'tools':>5} {'1st tokens':>10} "
        f"{'1st bytes':>10} {'all tokens':>10} {'turn p50':>9}"
    )
    for mode, row in report.items():
        print(
            f"{mode:10} {'yes' if row['completed'] else 'NO':>5} {row['model_steps']:>5} "
            f"{row['first_step_tools']:>5} {row['first_step_tokens']:>10} "
            f"{row['first_step_bytes']:>10} {row['total_prompt_tokens']:>10} "
            f"{row['turn_ms']['p50_ms']:>7.0f}ms"
        )
    on, off = report["on"], report["off"]
    first = off["first_step_tokens"] / on["first_step_tokens"]
    total = off["total_prompt_tokens"] / on["total_prompt_tokens"]
    print(f"first step: {first:.1f}x fewer tokens with disclosure; whole task: {total:.1f}x fewer")
    path = save(
        "disclosure",
        {"report": report, "first_step_ratio": first, "total_ratio": total, "runs": runs},
    )
    print(f"saved {path}")
    return 0 if on["completed"] and off["completed"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

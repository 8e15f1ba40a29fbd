"""The chaos scenario, small: workers killed with SIGKILL and the server restarted mid-conversation.

`make chaos` runs the full-size version (50 conversations) and prints its report.
"""

from __future__ import annotations

from infrastructure.chaos import run_chaos


async def test_conversations_survive_killed_workers_and_a_server_restart() -> None:
    report = await run_chaos(
        conversations_n=6,
        turns=4,
        baseline_n=1,
        seed=11,
        kill_every=(0.5, 1.5),
        # The orchestrator first: turns stall until it is back, so the later faults land
        # mid-conversation too.
        plan=["orchestrator", "server", "it", "finance"],
    )
    summary = report.summary()
    assert report.server_restarts >= 1
    assert set(report.kills) == {"orchestrator", "it", "finance"}, report.kills
    assert summary["completed"] == 6, summary
    assert summary["lost_messages"] == 0 and summary["answered_twice"] == 0, summary
    assert summary["duplicate_tool_effects"] == 0, summary
    # Each conversation's first and third turns apply an IT session effect: all were recorded.
    assert summary["tool_effects_recorded"] == 2 * (6 + 1), summary  # turns 1 and 3
    assert summary["tool_workflows_checked"] >= 6 * 4, summary

"""The chaos scenario, small: workers killed with SIGKILL and the server restarted mid-conversation.

`make chaos` runs the full-size version (50 conversations) and prints its report.
"""

from __future__ import annotations

from infrastructure.chaos import chaos_script, message_for, run_chaos
from shared.manifest import discover_teams

TURNS = 4
# The IT requests that apply a session effect (recorded once per call in the tool ledger).
EFFECT_REQUESTS = ("Track IP", "Set my Jira project")


def test_script_comes_from_the_team_manifests() -> None:
    teams = discover_teams()
    script = chaos_script(teams)
    examples = [example for team in teams for example in team.examples]
    assert len(script) == len(examples)
    for example in examples:
        assert any(message.startswith(example.rstrip(" ?.")) for message in script), example
    assert "(7 + 2) * 3" in message_for(script, 0, 7), "a local tool runs under chaos too"


async def test_conversations_survive_killed_workers_and_a_server_restart() -> None:
    script = chaos_script(discover_teams())
    effects_per_conversation = sum(
        1
        for turn in range(TURNS)
        if any(request in message_for(script, turn, 0) for request in EFFECT_REQUESTS)
    )
    assert effects_per_conversation >= 1, "the run must exercise a side-effect tool"
    report = await run_chaos(
        conversations_n=6,
        turns=TURNS,
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
    # Every side-effect request of every conversation (6 under chaos, 1 baseline) was recorded
    # once, whatever was killed meanwhile.
    assert summary["tool_effects_recorded"] == effects_per_conversation * (6 + 1), summary
    assert summary["tool_workflows_checked"] >= 6 * TURNS, summary

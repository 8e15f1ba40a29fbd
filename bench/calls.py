"""The tool calls the benches time: the teams' `sample_calls` from their manifests.

Teams take turns (the first sample call of each team, then the second, ...), so a three-tool turn
reaches several teams when there are several. The benches name no team and no tool: whatever
teams `*/team.toml` declares are benched. This module defines no workflow and does no I/O at import,
so workflow code may import `BenchCall` through `imports_passed_through`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from pydantic import BaseModel

from shared.manifest import TeamManifest, discover_teams


class BenchCall(BaseModel):
    """One tool call with known-good arguments, and the endpoint that serves it."""

    endpoint: str
    tool: str
    args: dict[str, Any]


def bench_calls(teams: Sequence[TeamManifest] | None = None) -> list[BenchCall]:
    found = discover_teams() if teams is None else teams
    columns = zip_longest(
        *(
            [
                BenchCall(endpoint=team.endpoint, tool=call.tool, args=call.args)
                for call in team.sample_calls
            ]
            for team in found
        )
    )
    calls = [call for row in columns for call in row if call is not None]
    if not calls:
        raise SystemExit("no team manifest declares `sample_calls`: there is nothing to bench")
    return calls


def team_of(call: BenchCall, teams: Sequence[TeamManifest]) -> TeamManifest:
    return next(team for team in teams if team.endpoint == call.endpoint)

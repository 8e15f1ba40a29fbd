"""A large synthetic catalog: 200 tools across three teams, each team in its own namespace, with
its own Nexus endpoint and worker, for tools disclosed on demand (tests/test_disclosure.py,
bench/disclosure.py).

Every tool is `<verb>_<noun>` with a realistic schema (an asset tag with a pattern, a reason, a
priority enum, a window, a dry-run flag, people to notify) and a description of a few sentences,
the shape of real catalogs. One tool is named `load_tools`, the name the orchestrator reserves
for its meta-tool: it must be reachable, qualified by its service. A tool answers with a change
ticket derived from its name and arguments, so an answer can be traced to one call.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from infrastructure.setup import (
    EndpointDefinition,
    ensure_endpoint,
    ensure_namespace,
    wait_for_namespace,
)
from shared.contract import ToolSpec
from shared.tools import RegisteredTool, ToolRegistry
from shared.worker import build_team_worker

CATALOG_SIZE = 200
# The tool a task needs, and a request the offline router sends to it.
TARGET_SERVICE = "netops"
TARGET_TOOL = "quarantine_device"
TARGET_ASSET = "DEV0042"
TARGET_REQUEST = f"Quarantine device {TARGET_ASSET}"
RESERVED_NAME_TOOL = "load_tools"  # published by the third team
ASSET_PATTERN = r"^[A-Z]{3}[0-9]{4}$"
FAST_PATH_BUDGET = timedelta(milliseconds=500)


@dataclass(frozen=True)
class CatalogTeam:
    service: str
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    size: int

    @property
    def namespace(self) -> str:
        return f"catalog-{self.service}"

    @property
    def endpoint(self) -> str:
        return f"catalog-{self.service}-tools"

    @property
    def task_queue(self) -> str:
        return f"catalog-{self.service}"


TEAMS = (
    CatalogTeam(
        "netops",
        ("quarantine", "inspect", "restart", "provision", "decommission", "audit", "snapshot"),
        (
            "device",
            "firewall_rule",
            "vlan",
            "certificate",
            "dns_record",
            "load_balancer",
            "vpn_tunnel",
            "switch_port",
            "subnet",
            "proxy",
        ),
        67,
    ),
    CatalogTeam(
        "people",
        ("onboard", "offboard", "review", "transfer", "suspend", "verify", "schedule"),
        (
            "employee",
            "contractor",
            "badge",
            "laptop",
            "mailbox",
            "training",
            "payroll_profile",
            "desk",
            "parking_permit",
            "mentor",
        ),
        67,
    ),
    CatalogTeam(
        "platform",
        ("deploy", "rollback", "scale", "pause", "archive", "reindex", "backfill"),
        (
            "service",
            "database",
            "queue",
            "bucket",
            "cron_job",
            "cache",
            "pipeline",
            "dashboard",
            "feature_flag",
            "search_index",
        ),
        66,
    ),
)
ENDPOINTS = [team.endpoint for team in TEAMS]

_VERB_DETAIL = {
    "audit": "Lists every change made to it over the window and flags the unapproved ones.",
    "decommission": "Removes it from service for good; its records are kept for a year.",
    "inspect": "Reads its live state and configuration without changing anything.",
    "provision": "Creates it from the team's standard template and registers it.",
    "quarantine": "Cuts it off from the rest of the estate until someone lifts the quarantine.",
    "restart": "Stops and starts it again, draining connections first.",
    "snapshot": "Copies its configuration and state to the backup store.",
}


def tool_names(team: CatalogTeam) -> list[str]:
    """The team's tool names: each noun with each verb, nouns interleaved, cut to its size."""
    pairs = itertools.product(team.verbs, team.nouns)
    names = [f"{verb}_{noun}" for verb, noun in pairs]
    if team is TEAMS[-1]:
        names = [RESERVED_NAME_TOOL, *names]
    return names[: team.size]


def _description(team: CatalogTeam, verb: str, noun: str) -> str:
    thing = noun.replace("_", " ")
    detail = _VERB_DETAIL.get(verb, f"Runs the {team.service} team's {verb} procedure on it.")
    return (
        f"{verb.capitalize()} a {thing} managed by the {team.service} team. {detail} "
        f"Every call is recorded against the {thing}'s asset tag, with the reason given, and "
        "answers with the change ticket that tracks it."
    )


def _arguments_model(name: str, noun: str) -> type[BaseModel]:
    thing = noun.replace("_", " ")
    fields: dict[str, Any] = {
        "asset": (
            Annotated[
                str,
                Field(
                    pattern=ASSET_PATTERN,
                    description=f"The {thing}'s asset tag: three capital letters and four "
                    "digits, as printed in the asset register.",
                ),
            ],
            ...,
        ),
        "reason": (
            str | None,
            Field(
                default=None,
                max_length=500,
                description="Why this is done; kept in the change log and shown to reviewers.",
            ),
        ),
        "priority": (
            Literal["low", "normal", "high", "urgent"],
            Field(default="normal", description="How soon the team's queue picks the change up."),
        ),
        "window_minutes": (
            int,
            Field(
                default=60,
                ge=5,
                le=1440,
                description="Length of the maintenance window the change may use, in minutes.",
            ),
        ),
        "dry_run": (
            bool,
            Field(default=False, description="Report what would change, and change nothing."),
        ),
        "notify": (
            list[str],
            Field(
                default_factory=list,
                max_length=10,
                description="People or on-call rotations to tell when the change is done.",
            ),
        ),
    }
    model: type[BaseModel] = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def change_ticket(service: str, tool: str, asset: str) -> str:
    return "CHG-" + hashlib.sha256(f"{service}/{tool}/{asset}".encode()).hexdigest()[:8].upper()


def _tool(team: CatalogTeam, name: str) -> RegisteredTool:
    verb, _, noun = name.partition("_")
    arguments = _arguments_model(name, noun)
    schema = arguments.model_json_schema()
    schema.pop("title", None)

    async def run(**args: Any) -> dict[str, Any]:
        return {
            "asset": args["asset"],
            "action": verb,
            "state": "planned" if args["dry_run"] else "done",
            "ticket": change_ticket(team.service, name, args["asset"]),
        }

    spec = ToolSpec(
        name=name,
        description=_description(team, verb, noun),
        parameters=schema,
        timeout_seconds=10,
        service=team.service,
    )
    return RegisteredTool(
        spec=spec,
        function=run,
        arguments_model=arguments,
        context_parameter=None,
        max_attempts=2,
    )


def registry(team: CatalogTeam) -> ToolRegistry:
    tools = ToolRegistry(team.service)
    for name in tool_names(team):
        tools.add_registered(_tool(team, name))
    return tools


@asynccontextmanager
async def catalog_teams(client: Client) -> AsyncIterator[list[CatalogTeam]]:
    """The three teams' namespaces, endpoints and workers on the server `client` talks to."""
    async with AsyncExitStack() as workers:
        for team in TEAMS:
            await ensure_namespace(client, team.namespace, timedelta(days=1))
            await wait_for_namespace(client, team.namespace)
            await ensure_endpoint(
                client,
                EndpointDefinition(
                    name=team.endpoint, namespace=team.namespace, task_queue=team.task_queue
                ),
            )
            team_client = Client(
                client.service_client,
                namespace=team.namespace,
                data_converter=pydantic_data_converter,
            )
            worker = build_team_worker(
                team_client,
                registry(team),
                task_queue=team.task_queue,
                fast_path_budget=FAST_PATH_BUDGET,
            )
            await workers.enter_async_context(worker)
        yield list(TEAMS)

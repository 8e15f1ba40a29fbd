"""Jira Cloud REST client for `jira_metrics` and `create_ticket`, with deterministic demo data when
unconfigured."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, HttpUrl, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.http import request_json
from shared.tools import ToolError

DEMO_LABEL = "demo data: set JIRA_BASE_URL, JIRA_EMAIL and JIRA_API_TOKEN for live Jira metrics"
DEMO_TICKET_LABEL = (
    "demo data: no issue was filed; set JIRA_BASE_URL, JIRA_EMAIL and JIRA_API_TOKEN to file it"
)
DEMO_BASE_URL = "https://jira.example.invalid"
ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]{1,9}-\d{1,9}$")
IssueType = Literal["Task", "Bug", "Story"]
Priority = Literal["Highest", "High", "Medium", "Low", "Lowest"]


class JiraSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JIRA_", env_file=".env", extra="ignore")

    base_url: HttpUrl | None = None
    email: str | None = None
    api_token: SecretStr | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.email and self.api_token)


class JiraMetrics(BaseModel):
    project: str
    open_issues: int
    created_last_7_days: int
    resolved_last_7_days: int
    source: Literal["jira", "demo"]
    note: str = ""


# Each metric is one JQL count; approximate-count is Jira Cloud's cheap counting endpoint.
METRIC_QUERIES = {
    "open_issues": "project = {project} AND statusCategory != Done",
    "created_last_7_days": "project = {project} AND created >= -7d",
    "resolved_last_7_days": "project = {project} AND resolved >= -7d",
}


class Ticket(BaseModel):
    key: str
    url: str
    created: bool = Field(description="False when an earlier attempt of this call had filed it.")
    source: Literal["jira", "demo"]
    note: str = ""


def _client(settings: JiraSettings) -> httpx.AsyncClient:
    assert settings.base_url is not None and settings.api_token is not None
    return httpx.AsyncClient(
        base_url=str(settings.base_url).rstrip("/"),
        auth=(settings.email or "", settings.api_token.get_secret_value()),
        timeout=settings.timeout_seconds,
        headers={"Accept": "application/json"},
    )


async def fetch_metrics(project: str, settings: JiraSettings) -> JiraMetrics:
    if not settings.configured:
        return demo_metrics(project)
    counts: dict[str, int] = {}
    async with _client(settings) as client:
        for metric, jql in METRIC_QUERIES.items():
            body = await request_json(
                client,
                "POST",
                "/rest/api/3/search/approximate-count",
                upstream="Jira",
                json={"jql": jql.format(project=f'"{project}"')},
            )
            count = body.get("count") if isinstance(body, dict) else None
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ToolError(f"Jira answered without a numeric 'count' for {metric}")
            counts[metric] = count
    return JiraMetrics(project=project, source="jira", **counts)


def demo_metrics(project: str) -> JiraMetrics:
    seed = int.from_bytes(hashlib.sha256(project.encode()).digest()[:8], "big")
    return JiraMetrics(
        project=project,
        open_issues=10 + seed % 90,
        created_last_7_days=seed // 100 % 25,
        resolved_last_7_days=seed // 10_000 % 20,
        source="demo",
        note=DEMO_LABEL,
    )


# A retried attempt looks for its call's issue this many times, this far apart, before filing.
RETRY_LOOKUPS = 3
RETRY_LOOKUP_PAUSE_SECONDS = 1.0


def call_label(call_id: str) -> str:
    """The label that marks the issue filed for one tool call: Jira's own idempotency key is
    missing, so a retried attempt finds the issue by it instead of filing a second one."""
    return "agent-call-" + hashlib.sha256(call_id.encode()).hexdigest()[:16]


def document(text: str) -> dict[str, Any]:
    """Plain text as Atlassian Document Format: one paragraph per blank-line-separated block
    (ADF refuses empty text nodes, so an empty description is an empty document)."""
    blocks = [block.strip() for block in text.split("\n\n") if block.strip()]
    return {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": block}]} for block in blocks
        ],
    }


async def create_issue(
    *,
    call_id: str,
    project: str,
    summary: str,
    description: str,
    issue_type: IssueType,
    priority: Priority | None,
    settings: JiraSettings,
    retried: bool = False,
) -> Ticket:
    """File the issue for one call, unless an issue with the call's label exists.

    `retried`: an earlier attempt of this call may have filed the issue and died before
    answering. Jira's search index lags a create by a second or two, so a retry looks a few times
    before it files; a first attempt looks once.
    """
    if not settings.configured:
        return demo_ticket(project, call_id)
    label = call_label(call_id)
    async with _client(settings) as client:
        lookups = RETRY_LOOKUPS if retried else 1
        for lookup in range(lookups):
            existing = await _labelled_issue(client, label)
            if existing is not None:
                return Ticket(
                    key=_key(existing),
                    url=_browse(settings, existing),
                    created=False,
                    source="jira",
                )
            if lookup + 1 < lookups:
                await asyncio.sleep(RETRY_LOOKUP_PAUSE_SECONDS)
        fields: dict[str, Any] = {
            "project": {"key": project},
            "summary": summary,
            "description": document(description),
            "issuetype": {"name": issue_type},
            "labels": [label],
        }
        if priority is not None:
            fields["priority"] = {"name": priority}
        body = await request_json(
            client, "POST", "/rest/api/3/issue", upstream="Jira", json={"fields": fields}
        )
    return Ticket(key=_key(body), url=_browse(settings, body), created=True, source="jira")


async def _labelled_issue(client: httpx.AsyncClient, label: str) -> Any:
    found = await request_json(
        client,
        "POST",
        "/rest/api/3/search/jql",
        upstream="Jira",
        json={"jql": f'labels = "{label}"', "fields": ["key"], "maxResults": 1},
    )
    issues = found.get("issues") if isinstance(found, dict) else None
    if not isinstance(issues, list):
        raise ToolError("Jira answered a search without an 'issues' list")
    return issues[0] if issues else None


def _key(issue: Any) -> str:
    key = issue.get("key") if isinstance(issue, dict) else None
    if not isinstance(key, str) or not ISSUE_KEY.match(key):
        raise ToolError(f"Jira answered without a valid issue key: {str(issue)[:200]}")
    return key


def _browse(settings: JiraSettings, issue: Any) -> str:
    return f"{str(settings.base_url).rstrip('/')}/browse/{_key(issue)}"


def demo_ticket(project: str, call_id: str) -> Ticket:
    number = 1 + int(hashlib.sha256(call_id.encode()).hexdigest()[:8], 16) % 9000
    key = f"{project}-{number}"
    return Ticket(
        key=key,
        url=f"{DEMO_BASE_URL}/browse/{key}",
        created=True,
        source="demo",
        note=DEMO_TICKET_LABEL,
    )

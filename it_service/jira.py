"""Jira Cloud REST client for `jira_metrics`, with deterministic demo data when unconfigured."""

from __future__ import annotations

import hashlib
from typing import Literal

import httpx
from pydantic import BaseModel, Field, HttpUrl, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.http import request_json
from shared.tools import ToolError

DEMO_LABEL = "demo data: set JIRA_BASE_URL, JIRA_EMAIL and JIRA_API_TOKEN for live Jira metrics"


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


async def fetch_metrics(project: str, settings: JiraSettings) -> JiraMetrics:
    if not settings.configured:
        return demo_metrics(project)
    assert settings.base_url is not None and settings.api_token is not None
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(
        base_url=str(settings.base_url).rstrip("/"),
        auth=(settings.email or "", settings.api_token.get_secret_value()),
        timeout=settings.timeout_seconds,
        headers={"Accept": "application/json"},
    ) as client:
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

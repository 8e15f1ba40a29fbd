"""A team declares itself once, in `<team_package>/team.toml`; everything else reads that file.

    service = "hr"                          # the registry's service name, the process name
    namespace = "hr"                        # the Temporal namespace the team's worker serves
    task_queue = "hr-tools"                 # the task queue it polls
    endpoint = "hr-tools"                   # the Nexus endpoint callers address
    registry = "hr_service.tools:registry"  # "module:attribute", inside the team's own package
    workflows = []                          # extra workflow classes the worker runs
    activities = []                         # extra activity functions the worker runs
    env_prefixes = ["HR_"]                  # environment variables the worker reads, by prefix

The file is data, not code, on purpose: setup, the dev stack, Terraform and the orchestrator's
default endpoint list read it without importing any team module (the orchestrator must never run
team code, and its image holds none). Only the team's own worker (`shared.worker`) resolves the
"module:attribute" paths, and they must point inside the team's package, so a team stays one
folder. This module names no team: it finds them by scanning `*/team.toml` under a root.
"""

from __future__ import annotations

import importlib.util
import keyword
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.agents import AgentDeclaration
from shared.config import ConfigError
from shared.contract import TOOL_NAME_PATTERN
from shared.mcp_config import McpServerSource

MANIFEST_FILE = "team.toml"

# Temporal Cloud's namespace rule (the strictest target), so a manifest that works on `make up`
# also works with the Terraform module.
NAMESPACE_PATTERN = r"^[a-z][a-z0-9-]*[a-z0-9]$"
# Nexus endpoint names: letters, digits and hyphens; Temporal Cloud refuses underscores.
ENDPOINT_PATTERN = r"^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$"
# The service name is also a process name, a log file name, a secrets directory name and a
# Terraform map key, so it stays a plain lower-case word.
SERVICE_PATTERN = r"^[a-z][a-z0-9_]*[a-z0-9]$"
IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# Upper case and ending in "_", so a prefix names a family of variables (ACME_...) and cannot
# swallow unrelated ones by accident (a bare "J" would hand the worker JAVA_HOME, JWT_SECRET, ...).
ENV_PREFIX_PATTERN = r"^[A-Z][A-Z0-9_]*_$"

ImportPath = Annotated[str, Field(pattern=IMPORT_PATH_PATTERN)]
EnvPrefix = Annotated[str, Field(pattern=ENV_PREFIX_PATTERN, min_length=2)]


class ManifestError(ConfigError):
    """A team manifest is missing, unreadable or wrong. The message is one line naming the file."""


class SampleCall(BaseModel):
    """A call of one of the team's tools with valid arguments that is fast and changes nothing:
    benches and probes time it without knowing anything else about the team."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(pattern=TOOL_NAME_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)


class UpstreamCall(BaseModel):
    """A call whose tool waits on an HTTP API the team's worker finds through one setting: the
    recovery bench stands in for the API, holds the request open and kills the worker meanwhile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(pattern=TOOL_NAME_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    url_variable: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$", description="The setting's variable.")
    url: str = Field(description="Its value, with {base} for the stand-in's address.")
    answer: dict[str, Any] = Field(description="A JSON body the API could answer with.")


class ApprovalCall(BaseModel):
    """A call whose tool's policy asks for approval, with valid arguments, and optionally the same
    tool's arguments under its threshold: the approval bench times approve-to-result on them.
    `{n}` in a string argument becomes the sample's number (format specs allowed: `{n:04d}`), so
    effects a team limits per key (a daily total per cost centre) do not add up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(pattern=TOOL_NAME_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    ungated_args: dict[str, Any] | None = None

    def arguments(self, sample: int, *, gated: bool = True) -> dict[str, Any]:
        chosen = self.args if gated else (self.ungated_args or {})
        return {k: v.format(n=sample) if isinstance(v, str) else v for k, v in chosen.items()}


class TeamManifest(BaseModel):
    """One team's identity and what its worker serves. See the module docstring for the file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    package: str = Field(description="The team's Python package: the folder holding team.toml.")
    service: str = Field(pattern=SERVICE_PATTERN, max_length=40)
    description: str = Field(default="", max_length=200)
    namespace: str = Field(pattern=NAMESPACE_PATTERN, min_length=2, max_length=39)
    task_queue: str = Field(pattern=r"^\S+$", max_length=200)
    endpoint: str = Field(pattern=ENDPOINT_PATTERN, max_length=200)
    # Optional when the team publishes only MCP servers' tools (`mcp_servers`): no Python at all.
    registry: ImportPath | None = None
    workflows: list[ImportPath] = Field(default_factory=list)
    activities: list[ImportPath] = Field(default_factory=list)
    env_prefixes: list[EnvPrefix] = Field(default_factory=list)
    # Requests a user might type that use this team's tools; the built-in offline model routes
    # them by their words, so the chaos run can drive every team without knowing its tools.
    examples: list[str] = Field(default_factory=list)
    sample_calls: list[SampleCall] = Field(default_factory=list)
    upstream_calls: list[UpstreamCall] = Field(default_factory=list)
    approval_calls: list[ApprovalCall] = Field(default_factory=list)
    # Optional "module:function": `async (client of the team's namespace, conversation id) -> int`,
    # how many of the team's effects were applied more than once in that conversation. The chaos
    # run calls it after killing workers; a team with per-conversation state knows what to count.
    effect_audit: ImportPath | None = None
    # MCP servers whose tools the team publishes beside its registry's (shared.mcp_config).
    mcp_servers: list[McpServerSource] = Field(default_factory=list)
    # Agents the team publishes beside its tools (shared.agents): its worker then needs the
    # `agents` dependency group (LiteLLM).
    agents: list[AgentDeclaration] = Field(default_factory=list)

    @model_validator(mode="after")
    def _code_stays_in_the_team_folder(self) -> TeamManifest:
        if self.registry is None and not self.mcp_servers:
            raise ValueError("a team publishes tools: give 'registry', 'mcp_servers' or both")
        names = [source.name for source in self.mcp_servers]
        if len(set(names)) != len(names):
            raise ValueError("two mcp_servers have the same name")
        agents = [agent.name for agent in self.agents]
        if len(set(agents)) != len(agents):
            raise ValueError("two agents have the same name")
        for path in self.import_paths():
            module = path.partition(":")[0]
            if module != self.package and not module.startswith(f"{self.package}."):
                raise ValueError(
                    f"'{path}' is outside the team's package '{self.package}': "
                    "a team's code lives in its own folder"
                )
        return self

    def import_paths(self) -> list[str]:
        paths = [*([self.registry] if self.registry else []), *self.workflows, *self.activities]
        return [*paths, self.effect_audit] if self.effect_audit else paths


def load_manifest(path: Path) -> TeamManifest:
    """Read and validate one `team.toml`; its folder's name is the team's package."""
    package = path.parent.name
    if not package.isidentifier() or keyword.iskeyword(package):
        raise ManifestError(
            f"invalid team manifest {path}: the folder name '{package}' is not an importable "
            "Python package name"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ManifestError(f"cannot read team manifest {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"invalid team manifest {path}: not TOML ({err})") from None
    if "package" in data:
        raise ManifestError(
            f"invalid team manifest {path}: 'package' is the folder's name, not a setting"
        )
    try:
        return TeamManifest.model_validate({**data, "package": package})
    except ValidationError as err:
        raise ManifestError(f"invalid team manifest {path}: {_describe(err)}") from None


def _describe(err: ValidationError) -> str:
    problems = []
    for error in err.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def default_root() -> Path:
    """Where team folders live: next to `shared/`, in the repository and in every image."""
    return Path(__file__).resolve().parent.parent


def discover_teams(root: Path | None = None) -> list[TeamManifest]:
    """Every team under `root` (default: `default_root()`), sorted by service name.

    Reads files only; imports nothing. Two teams claiming the same service name, namespace or
    endpoint are refused, because setup, keys and discovery are keyed by them.
    """
    base = default_root() if root is None else root
    teams: list[TeamManifest] = []
    claimed: dict[tuple[str, str], str] = {}
    for path in sorted(base.glob(f"*/{MANIFEST_FILE}")):
        if path.parent.name.startswith("."):
            continue  # .venv, .git and other tool folders are never teams
        team = load_manifest(path)
        for kind, value in (
            ("service", team.service),
            ("namespace", team.namespace),
            ("endpoint", team.endpoint),
        ):
            owner = claimed.setdefault((kind, value), team.package)
            if owner != team.package:
                raise ManifestError(
                    f"invalid team manifest {path}: {kind} '{value}' is already "
                    f"declared by {owner}/{MANIFEST_FILE}"
                )
        teams.append(team)
    return sorted(teams, key=lambda team: team.service)


def find_team(package: str) -> TeamManifest:
    """The manifest of the team package `package`, wherever Python would import it from.

    Locating a top-level package does not import it, so a bad manifest is reported before any
    team code runs.
    """
    if not package.isidentifier():
        raise ManifestError(f"'{package}' is not a team package name (a top-level Python package)")
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MANIFEST_FILE
        if path.is_file():
            return load_manifest(path)
    if not locations:
        raise ManifestError(f"no team package '{package}' on the Python path")
    raise ManifestError(f"package '{package}' has no {MANIFEST_FILE}: it is not a team")


def discovered_endpoints() -> list[str]:
    """The Nexus endpoints of every team found next to `shared/`: the orchestrator's default tool
    endpoints. Empty where no team folder exists (an orchestrator image): set the list there."""
    return [team.endpoint for team in discover_teams()]

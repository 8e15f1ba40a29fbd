"""Offline checks of infrastructure/terraform against the temporalcloud provider's rules.

No terraform binary or provider download is available, so every .tf file is parsed with python-hcl2
and checked against the schema rules of the pinned provider (see DESIGN.md) and against the env files
the services read on Temporal Cloud (deploy/env/cloud/). The teams are a variable (`for_each`), its
value generated from the team manifests (`make terraform-teams`): the checks run against that value.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from dotenv import dotenv_values
from hcl2 import SerializationOptions

from infrastructure.terraform_teams import main as write_terraform_teams
from infrastructure.terraform_teams import terraform_teams
from shared.config import AWAITING_APPROVAL_ATTRIBUTE
from shared.manifest import discover_teams

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infrastructure" / "terraform"
TFVARS_EXAMPLE = TF_DIR / "terraform.tfvars.example"
CLOUD_ENV = ROOT / "deploy" / "env" / "cloud"

# Teams with a committed Cloud env file; every team in the manifests is checked against the rules.
TEAMS_WITH_CLOUD_ENV = ("it", "finance")
NAMESPACE_NAME_RE = "^[a-z][a-z0-9-]*[a-z0-9]$"
NAMESPACE_PERMISSIONS = {"admin", "write", "read"}

OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False, preserve_heredocs=False
)


# --- parsing ----------------------------------------------------------------------------------


def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle, serialization_options=OPTIONS)


class Config:
    """All .tf files of the module, merged the way Terraform merges them."""

    def __init__(self, directory: Path) -> None:
        self.files = sorted(directory.glob("*.tf"))
        self.variables: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        self.terraform: list[dict[str, Any]] = []
        self.providers: dict[str, dict[str, Any]] = {}
        for path in self.files:
            data = parse(path)
            for block in data.get("variable", []):
                self._merge(self.variables, block, f"variable in {path.name}")
            for block in data.get("output", []):
                self._merge(self.outputs, block, f"output in {path.name}")
            for block in data.get("locals", []):
                self._merge(self.locals, block, f"local in {path.name}")
            for block in data.get("provider", []):
                self.providers.update(block)
            for block in data.get("resource", []):
                for rtype, by_name in block.items():
                    self._merge(self.resources.setdefault(rtype, {}), by_name, rtype)
            self.terraform.extend(data.get("terraform", []))

    @staticmethod
    def _merge(into: dict[str, Any], block: dict[str, Any], what: str) -> None:
        for name, body in block.items():
            assert name not in into, f"duplicate {what}: {name}"
            into[name] = body

    def resource(self, rtype: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(rtype, {})

    def resolve(self, value: Any) -> Any:
        """Resolve `${var.a.b}` / `${local.a.b}` to defaults and locals; other values unchanged."""
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\$\{(var|local)\.([\w.]+)\}", value)
        if not match:
            return value
        kind, path = match.groups()
        first, *rest = path.split(".")
        current = self.variables[first]["default"] if kind == "var" else self.locals[first]
        for part in rest:
            current = current[part]
        return self.resolve(current)


@cache
def tf() -> Config:
    return Config(TF_DIR)


@cache
def tfvars_example() -> dict[str, Any]:
    return parse(TFVARS_EXAMPLE)


def ref(rtype: str, name: str, attribute: str = "id") -> str:
    return f"${{{rtype}.{name}.{attribute}}}"


def validation_conditions(variable: str) -> list[str]:
    return [v["condition"] for v in tf().variables[variable].get("validation", [])]


def regexes_in(condition: str) -> list[str]:
    """The patterns of regex("...") calls in a condition, unescaped from HCL string syntax."""
    return [
        bytes(m, "utf-8").decode("unicode_escape")
        for m in re.findall(r'regex\(\\?"((?:[^"\\]|\\.)*?)\\?"', condition)
    ]


def variable_regexes(variable: str) -> list[str]:
    return [r for c in validation_conditions(variable) for r in regexes_in(c)]


def cloud_env(service: str) -> dict[str, str | None]:
    return dotenv_values(CLOUD_ENV / f"{service}.env")


@cache
def teams_value() -> dict[str, dict[str, str]]:
    """var.teams as `make terraform-teams` writes it from the manifests."""
    teams: dict[str, dict[str, str]] = terraform_teams(discover_teams())["teams"]
    return teams


def object_keys(expression: str) -> set[str]:
    """The attribute names of the object a `{for ... : k => {A = ..., B = ...}}` builds."""
    return set(re.findall(r"\b([A-Z][A-Z_]*) = ", expression))


def team_resource(rtype: str) -> dict[str, Any]:
    resources = tf().resource(rtype)
    assert "team" in resources, f"{rtype}.team (one for_each over var.teams) is missing"
    body = resources["team"]
    assert body.get("for_each") == "${var.teams}", f"{rtype}.team must be for_each = var.teams"
    return body


# --- the files parse and the provider is pinned -------------------------------------------------


def test_every_tf_file_parses() -> None:
    assert {p.name for p in tf().files} >= {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
    assert isinstance(tfvars_example(), dict)


def test_provider_is_pinned() -> None:
    required = [
        providers
        for block in tf().terraform
        for providers in block.get("required_providers", [])
        if "temporalcloud" in providers
    ]
    assert len(required) == 1, "declare temporalcloud once in required_providers"
    provider = required[0]["temporalcloud"]
    assert provider["source"] == "temporalio/temporalcloud"
    assert re.fullmatch(r"(= ?)?\d+\.\d+\.\d+", provider["version"]), (
        f"pin an exact provider version, not {provider['version']!r}"
    )
    assert any("required_version" in block for block in tf().terraform)
    assert "api_key" not in tf().providers.get("temporalcloud", {}), "credentials come from env"


def test_timestamp_is_never_used() -> None:
    for path in [*tf().files, TFVARS_EXAMPLE]:
        assert "timestamp(" not in path.read_text(), f"{path.name} uses timestamp()"


# --- namespaces -------------------------------------------------------------------------------


def test_one_orchestrator_namespace_and_one_per_team_with_api_key_or_mtls_auth() -> None:
    namespaces = tf().resource("temporalcloud_namespace")
    assert set(namespaces) == {"orchestrator", "team"}, "teams are one for_each, not a block each"
    team_resource("temporalcloud_namespace")
    for name, body in namespaces.items():
        assert body.get("api_key_auth") is True or body.get("accepted_client_ca"), (
            f"namespace {name} needs api_key_auth = true or accepted_client_ca"
        )
        assert body["regions"] == ["${var.region}"]
        assert body["retention_days"] == "${var.retention_days}"
    assert namespaces["orchestrator"]["name"] == "${local.orchestrator_namespace_name}"
    assert namespaces["team"]["name"] == "${local.team_namespace_names[each.key]}"
    assert tf().locals["orchestrator_namespace_name"] == (
        "${var.name_prefix}${var.orchestrator_namespace}"
    )
    assert "${var.name_prefix}${team.namespace}" in tf().locals["team_namespace_names"]
    assert "for service, team in var.teams" in tf().locals["team_namespace_names"]


def test_default_orchestrator_namespace_matches_the_service_default() -> None:
    from shared.config import OrchestratorTemporalSettings

    default = OrchestratorTemporalSettings.model_fields["namespace"].default
    assert tf().variables["orchestrator_namespace"]["default"] == default
    assert tf().variables["name_prefix"]["default"] == ""


def test_namespace_names_are_validated() -> None:
    for variable in ("orchestrator_namespace", "teams"):
        patterns = variable_regexes(variable)
        assert NAMESPACE_NAME_RE in patterns, f"var.{variable} does not enforce {NAMESPACE_NAME_RE}"
        conditions = " ".join(validation_conditions(variable))
        assert re.search(r"length\([\w.]+\) >= 2", conditions), "minimum length 2"
        longest = re.search(r"length\([\w.]+\) <= (\d+)", conditions)
        assert longest, "maximum length"
        assert int(longest.group(1)) <= 64, "the provider rejects names over 64 characters"
    # The prefixed name is checked as a whole before anything is created.
    for body in tf().resource("temporalcloud_namespace").values():
        preconditions = [p for block in body["lifecycle"] for p in block["precondition"]]
        assert any("<= 39" in p["condition"] for p in preconditions)
    for team in teams_value().values():
        assert re.fullmatch(NAMESPACE_NAME_RE, team["namespace"])
        assert 2 <= len(team["namespace"]) <= 39


def test_generated_teams_pass_the_variable_validation() -> None:
    teams = teams_value()
    assert {"it", "finance"} <= set(teams), "the repository's teams are in the generated value"
    conditions = validation_conditions("teams")

    def patterns_on(subject: str) -> list[str]:
        return [p for c in conditions if f", {subject})" in c for p in regexes_in(c)]

    for service, team in teams.items():
        assert (
            all(re.fullmatch(p, service) for p in patterns_on("service"))
            and service != "orchestrator"
        )
        assert all(re.fullmatch(p, team["namespace"]) for p in patterns_on("team.namespace"))
        assert all(re.fullmatch(p, team["endpoint"]) for p in patterns_on("team.endpoint"))
        assert team["task_queue"].strip()
    for subject in ("service", "team.namespace", "team.endpoint"):
        assert patterns_on(subject), f"var.teams validates {subject} with a pattern"
    assert len({t["namespace"] for t in teams.values()}) == len(teams)
    assert len({t["endpoint"] for t in teams.values()}) == len(teams)
    declared = re.sub(r"\s", "", tf().variables["teams"]["type"])
    for attribute in ("namespace", "task_queue", "endpoint", "description"):
        assert f"{attribute}=" in declared, f"var.teams has no {attribute}"


def test_terraform_teams_writes_an_auto_tfvars_file(tmp_path: Path) -> None:
    target = tmp_path / "teams.auto.tfvars.json"
    assert write_terraform_teams(["terraform_teams", str(target)]) == 0
    assert json.loads(target.read_text()) == {"teams": teams_value()}
    assert target.name.endswith(".auto.tfvars.json"), "terraform plan loads it by itself"
    ignored = (TF_DIR / ".gitignore").read_text().splitlines()
    assert "teams.auto.tfvars.json" in ignored, "generated from the manifests: never committed"


@pytest.mark.parametrize("bad", ["it_tools", "Orchestrator", "-it", "it-", "1it", "x"])
def test_namespace_name_rule_rejects(bad: str) -> None:
    assert not re.fullmatch(NAMESPACE_NAME_RE, bad)


def test_name_prefix_is_validated() -> None:
    patterns = variable_regexes("name_prefix")
    assert patterns
    for good in ("", "prod-", "staging2-"):
        assert all(re.fullmatch(p, good) for p in patterns), good
    for bad in ("prod", "Prod-", "prod_", "-", "1prod-"):
        assert not all(re.fullmatch(p, bad) for p in patterns), bad


def test_region_and_retention_are_validated() -> None:
    regions = variable_regexes("region")
    assert regions, "var.region has a regex validation"
    example = tfvars_example()["region"]
    assert all(re.fullmatch(r, example) for r in regions), f"example region {example} is rejected"
    for bad in ("us-east-1", "azure-eastus", "aws_us_east_1", "AWS-US-EAST-1"):
        assert not all(re.fullmatch(r, bad) for r in regions), f"region {bad} is accepted"
    retention = " ".join(validation_conditions("retention_days"))
    assert ">= 1" in retention and "<= 90" in retention
    default = tf().variables["retention_days"]["default"]
    assert 1 <= default <= 90


# --- Nexus endpoints --------------------------------------------------------------------------


def test_one_nexus_endpoint_per_team() -> None:
    assert set(tf().resource("temporalcloud_nexus_endpoint")) == {"team"}
    team_resource("temporalcloud_nexus_endpoint")


def test_endpoint_targets_the_team_namespace_by_id() -> None:
    target = team_resource("temporalcloud_nexus_endpoint")["worker_target"]
    assert target["namespace_id"] == "${temporalcloud_namespace.team[each.key].id}", (
        "worker_target.namespace_id takes the namespace id, not its name"
    )
    assert target["task_queue"] == "${each.value.task_queue}"
    for service in TEAMS_WITH_CLOUD_ENV:
        assert teams_value()[service]["task_queue"] == cloud_env(service)["TEMPORAL_TASK_QUEUE"]


def test_only_the_orchestrator_may_call_an_endpoint() -> None:
    endpoint = team_resource("temporalcloud_nexus_endpoint")
    assert endpoint["allowed_caller_namespaces"] == [
        ref("temporalcloud_namespace", "orchestrator")
    ], "allowed_caller_namespaces holds only the orchestrator namespace id"


def test_endpoint_names_have_no_underscore() -> None:
    endpoint = team_resource("temporalcloud_nexus_endpoint")
    assert endpoint["name"] == "${local.team_endpoint_names[each.key]}"
    assert "${var.name_prefix}${team.endpoint}" in tf().locals["team_endpoint_names"]
    # Of var.teams' patterns, the endpoint rule is the one that allows upper case.
    endpoint_patterns = [p for p in variable_regexes("teams") if "A-Z" in p]
    assert endpoint_patterns, "var.teams validates endpoint names"
    assert all(not re.fullmatch(p, "it_tools") for p in endpoint_patterns)
    for team in teams_value().values():
        name = team["endpoint"]
        assert "_" not in name and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]", name)
        assert all(re.fullmatch(p, name) for p in endpoint_patterns)


def test_orchestrator_knows_the_endpoint_names() -> None:
    value = tf().outputs["orchestrator_env"]["value"]["ORCHESTRATOR_TOOL_ENDPOINTS"]
    assert "for service in sort(keys(var.teams))" in value
    assert "temporalcloud_nexus_endpoint.team[service].name" in value
    # The committed Cloud env file lists the endpoints of the teams it has env files for.
    env = cloud_env("orchestrator")["ORCHESTRATOR_TOOL_ENDPOINTS"]
    assert env is not None
    expected = {teams_value()[service]["endpoint"] for service in TEAMS_WITH_CLOUD_ENV}
    assert set(env.split(",")) == expected


# --- service accounts and API keys ------------------------------------------------------------


def test_namespace_scoped_service_account_per_service() -> None:
    accounts = tf().resource("temporalcloud_service_account")
    assert set(accounts) == {"orchestrator", "team"}
    team_resource("temporalcloud_service_account")
    namespaces = {
        "orchestrator": ref("temporalcloud_namespace", "orchestrator"),
        "team": "${temporalcloud_namespace.team[each.key].id}",
    }
    for name, account in accounts.items():
        assert "account_access" not in account and "namespace_accesses" not in account
        scoped = account["namespace_scoped_access"]
        assert scoped["namespace_id"] == namespaces[name]
        assert scoped["permission"] in NAMESPACE_PERMISSIONS - {"admin"}, (
            "workers need write, not admin"
        )


def test_api_key_per_service_with_a_fixed_expiry() -> None:
    keys = tf().resource("temporalcloud_apikey")
    assert set(keys) == {"orchestrator", "team"}
    team_resource("temporalcloud_apikey")
    owners = {
        "orchestrator": ref("temporalcloud_service_account", "orchestrator"),
        "team": "${temporalcloud_service_account.team[each.key].id}",
    }
    for name, key in keys.items():
        assert key["owner_type"] == "service-account"
        assert key["owner_id"] == owners[name]
        assert key["expiry_time"] == "${var.api_key_expiry}"


def test_api_key_expiry_variable_is_required_and_validated() -> None:
    variable = tf().variables["api_key_expiry"]
    assert "default" not in variable, "the expiry is chosen per deployment"
    conditions = validation_conditions("api_key_expiry")
    assert any("formatdate(" in c or "regex(" in c for c in conditions), "validate RFC 3339"
    example = tfvars_example()["api_key_expiry"]
    assert datetime.fromisoformat(example).tzinfo is not None, f"{example} is not RFC 3339"


def test_every_api_key_output_is_sensitive() -> None:
    exposed = set()
    for name, output in tf().outputs.items():
        text = str(output["value"])
        for key in re.findall(r"temporalcloud_apikey\.(\w+)", text):
            exposed.add(key)
            assert output.get("sensitive") is True, f"output {name} exposes an API key"
    assert exposed == {"orchestrator", "team"}, "each service's API key is an output"


def test_existing_per_team_state_is_moved_not_recreated() -> None:
    """State from before the for_each rewrite names `temporalcloud_namespace.it` etc.: `moved`
    blocks carry those objects over, or an apply would destroy namespaces and live keys."""
    moved = [block for path in tf().files for block in parse(path).get("moved", [])]
    pairs = {(block["from"], block["to"]) for block in moved}
    for rtype in (
        "temporalcloud_namespace",
        "temporalcloud_nexus_endpoint",
        "temporalcloud_service_account",
        "temporalcloud_apikey",
    ):
        for team in TEAMS_WITH_CLOUD_ENV:
            assert (f"${{{rtype}.{team}}}", f'${{{rtype}.team["{team}"]}}') in pairs, (rtype, team)


# --- outputs feed the cloud env files ---------------------------------------------------------


def test_orchestrator_env_output_matches_the_cloud_env_file() -> None:
    output = tf().outputs["orchestrator_env"]
    assert output.get("sensitive") is not True, "non-secret settings stay readable"
    value = output["value"]
    env = cloud_env("orchestrator")
    assert set(value) <= set(env), "every output key is a variable of the env file"
    assert value["TEMPORAL_NAMESPACE"] == ref("temporalcloud_namespace", "orchestrator"), (
        "services connect with the namespace id"
    )
    assert "grpc_address" in str(tf().locals) and "orchestrator" in value["TEMPORAL_ADDRESS"]
    assert tf().resolve(value["TEMPORAL_TASK_QUEUE"]) == env["TEMPORAL_TASK_QUEUE"]
    assert value["TEMPORAL_TLS"] == env["TEMPORAL_TLS"] == "true"
    placeholder = env["TEMPORAL_API_KEY"] or ""
    assert placeholder.startswith("<") and "orchestrator_api_key" in placeholder
    assert "orchestrator_api_key" in tf().outputs


@pytest.mark.parametrize("service", TEAMS_WITH_CLOUD_ENV)
def test_team_env_output_matches_the_cloud_env_file(service: str) -> None:
    output = tf().outputs["team_env"]
    assert output.get("sensitive") is not True, "non-secret settings stay readable"
    expression = output["value"]
    assert "for service, team in var.teams" in expression, "one entry per team"
    keys = object_keys(expression)
    env = cloud_env(service)
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE"} <= keys
    assert keys <= set(env), "every output key is a variable of the team's env file"
    assert "TEMPORAL_NAMESPACE = temporalcloud_namespace.team[service].id" in expression, (
        "services connect with the namespace id"
    )
    assert "TEMPORAL_TASK_QUEUE = team.task_queue" in expression
    assert teams_value()[service]["task_queue"] == env["TEMPORAL_TASK_QUEUE"]
    assert "NEXUS_AUTH_AUDIENCE = temporalcloud_nexus_endpoint.team[service].name" in expression
    assert env["NEXUS_AUTH_AUDIENCE"] == teams_value()[service]["endpoint"]
    assert env["TEMPORAL_TLS"] == "true"
    placeholder = env["TEMPORAL_API_KEY"] or ""
    assert placeholder.startswith("<") and "team_api_keys" in placeholder
    assert service in placeholder
    assert "team_api_keys" in tf().outputs


# --- tfvars example ---------------------------------------------------------------------------


def test_tfvars_example_sets_every_required_variable() -> None:
    example = tfvars_example()
    generated = set(terraform_teams(discover_teams()))
    required = {name for name, body in tf().variables.items() if "default" not in body}
    assert {"region", "api_key_expiry", "teams"} <= required
    missing = required - set(example) - generated
    assert not missing, f"set by neither the example nor make terraform-teams: {sorted(missing)}"
    assert set(example) <= set(tf().variables), "the example sets only declared variables"
    assert "teams" not in example, "the teams come from the manifests, not a hand-kept list"


def test_the_orchestrator_namespace_has_the_awaiting_approval_search_attribute() -> None:
    text = (TF_DIR / "main.tf").read_text()
    block = text[text.index('resource "temporalcloud_namespace_search_attribute"') :]
    block = block[: block.index("}") + 1]
    assert "temporalcloud_namespace.orchestrator.id" in block
    assert f'name         = "{AWAITING_APPROVAL_ATTRIBUTE}"' in block
    assert 'type         = "bool"' in block

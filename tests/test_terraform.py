"""Offline checks of infrastructure/terraform against the temporalcloud provider's rules.

No terraform binary or provider download is available, so every .tf file is parsed with python-hcl2
and checked against the schema rules of the pinned provider (see DESIGN.md) and against the env files
the services read on Temporal Cloud (deploy/env/cloud/).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from dotenv import dotenv_values
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infrastructure" / "terraform"
TFVARS_EXAMPLE = TF_DIR / "terraform.tfvars.example"
CLOUD_ENV = ROOT / "deploy" / "env" / "cloud"

SERVICES = ("orchestrator", "it", "finance")
TEAMS = ("it", "finance")
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


def test_one_namespace_per_service_with_api_key_or_mtls_auth() -> None:
    namespaces = tf().resource("temporalcloud_namespace")
    assert set(namespaces) == set(SERVICES)
    for name, body in namespaces.items():
        assert body.get("api_key_auth") is True or body.get("accepted_client_ca"), (
            f"namespace {name} needs api_key_auth = true or accepted_client_ca"
        )
        assert body["regions"] == ["${var.region}"]
        assert body["retention_days"] == "${var.retention_days}"
        assert tf().resolve(body["name"]) == name, "default names match the services' defaults"


def test_namespace_names_are_validated() -> None:
    namespaces = tf().resource("temporalcloud_namespace")
    matches = [re.match(r"\$\{var\.(\w+)", body["name"]) for body in namespaces.values()]
    assert all(matches), "namespace names come from a variable"
    for variable in {m.group(1) for m in matches if m}:
        patterns = variable_regexes(variable)
        assert NAMESPACE_NAME_RE in patterns, f"var.{variable} does not enforce {NAMESPACE_NAME_RE}"
        conditions = " ".join(validation_conditions(variable))
        assert re.search(r"length\(\w+\) >= 2", conditions), "minimum length 2"
        longest = re.search(r"length\(\w+\) <= (\d+)", conditions)
        assert longest, "maximum length"
        max_length = int(longest.group(1))
        assert max_length <= 64, "the provider rejects names over 64 characters"
        for name in tf().variables[variable]["default"].values():
            assert re.fullmatch(NAMESPACE_NAME_RE, name) and 2 <= len(name) <= max_length
        for value in tfvars_example().get(variable, {}).values():
            assert re.fullmatch(NAMESPACE_NAME_RE, value) and 2 <= len(value) <= max_length


@pytest.mark.parametrize("bad", ["it_tools", "Orchestrator", "-it", "it-", "1it", "x"])
def test_namespace_name_rule_rejects(bad: str) -> None:
    assert not re.fullmatch(NAMESPACE_NAME_RE, bad)


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
    assert set(tf().resource("temporalcloud_nexus_endpoint")) == set(TEAMS)


@pytest.mark.parametrize("team", TEAMS)
def test_endpoint_targets_the_team_namespace_by_id(team: str) -> None:
    endpoint = tf().resource("temporalcloud_nexus_endpoint")[team]
    target = endpoint["worker_target"]
    assert target["namespace_id"] == ref("temporalcloud_namespace", team), (
        "worker_target.namespace_id takes the namespace id, not its name"
    )
    assert tf().resolve(target["task_queue"]) == cloud_env(team)["TEMPORAL_TASK_QUEUE"]


@pytest.mark.parametrize("team", TEAMS)
def test_only_the_orchestrator_may_call_an_endpoint(team: str) -> None:
    endpoint = tf().resource("temporalcloud_nexus_endpoint")[team]
    assert endpoint["allowed_caller_namespaces"] == [
        ref("temporalcloud_namespace", "orchestrator")
    ], "allowed_caller_namespaces holds only the orchestrator namespace id"


@pytest.mark.parametrize("team", TEAMS)
def test_endpoint_names_have_no_underscore(team: str) -> None:
    raw = tf().resource("temporalcloud_nexus_endpoint")[team]["name"]
    name = tf().resolve(raw)
    assert "_" not in name and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]", name)
    variable = re.match(r"\$\{var\.(\w+)", raw)
    if variable:  # a configurable name is validated with a pattern that rejects underscores
        patterns = variable_regexes(variable.group(1))
        assert patterns and all(not re.fullmatch(p, "it_tools") for p in patterns)
        assert all(re.fullmatch(p, name) for p in patterns)


def test_orchestrator_knows_the_endpoint_names() -> None:
    names = [tf().resolve(tf().resource("temporalcloud_nexus_endpoint")[t]["name"]) for t in TEAMS]
    env = cloud_env("orchestrator")["ORCHESTRATOR_TOOL_ENDPOINTS"]
    assert env is not None and env.split(",") == names
    value = tf().outputs["orchestrator_env"]["value"]
    for team in TEAMS:
        assert f"temporalcloud_nexus_endpoint.{team}.name" in value["ORCHESTRATOR_TOOL_ENDPOINTS"]


# --- service accounts and API keys ------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_namespace_scoped_service_account_per_service(service: str) -> None:
    account = tf().resource("temporalcloud_service_account")[service]
    assert "account_access" not in account and "namespace_accesses" not in account
    scoped = account["namespace_scoped_access"]
    assert scoped["namespace_id"] == ref("temporalcloud_namespace", service)
    assert scoped["permission"] in NAMESPACE_PERMISSIONS - {"admin"}, (
        "workers need write, not admin"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_api_key_per_service_with_a_fixed_expiry(service: str) -> None:
    key = tf().resource("temporalcloud_apikey")[service]
    assert key["owner_type"] == "service-account"
    assert key["owner_id"] == ref("temporalcloud_service_account", service)
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
    assert exposed == set(SERVICES), "each service's API key is an output"


# --- outputs feed the cloud env files ---------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_service_env_output_matches_the_cloud_env_file(service: str) -> None:
    output = tf().outputs[f"{service}_env"]
    assert output.get("sensitive") is not True, "non-secret settings stay readable"
    value = output["value"]
    env = cloud_env(service)
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"} <= set(value)
    assert set(value) <= set(env), "every output key is a variable of the env file"
    assert value["TEMPORAL_NAMESPACE"] == ref("temporalcloud_namespace", service), (
        "services connect with the namespace id"
    )
    assert "grpc_address" in str(tf().locals) and service in value["TEMPORAL_ADDRESS"]
    assert tf().resolve(value["TEMPORAL_TASK_QUEUE"]) == env["TEMPORAL_TASK_QUEUE"]
    assert value["TEMPORAL_TLS"] == env["TEMPORAL_TLS"] == "true"
    placeholder = env["TEMPORAL_API_KEY"] or ""
    assert placeholder.startswith("<") and f"{service}_api_key" in placeholder
    assert f"{service}_api_key" in tf().outputs


# --- tfvars example ---------------------------------------------------------------------------


def test_tfvars_example_sets_every_required_variable() -> None:
    example = tfvars_example()
    required = {name for name, body in tf().variables.items() if "default" not in body}
    assert required, "region and api_key_expiry have no default"
    assert required <= set(example), f"missing from the example: {sorted(required - set(example))}"
    assert set(example) <= set(tf().variables), "the example sets only declared variables"

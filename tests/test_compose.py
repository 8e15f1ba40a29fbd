"""Offline checks of the self-hosted stack: docker-compose.yml, the Dockerfiles and env files in deploy/.

There is no Docker engine here, so the compose file is validated against the compose-spec JSON schema
and everything it points at is checked to exist and to agree with the services' own defaults.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import typing
from functools import cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from dotenv import dotenv_values
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings
from ruamel.yaml import YAML

from finance_service.quotes import QuoteSettings
from infrastructure.compose_file import (
    depends_on,
    dockerfile_instructions,
    env_files,
    image_copies,
    seconds,
)
from infrastructure.setup import STORE_PASSWORD_FILE, StackSettings
from it_service.jira import JiraSettings
from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.gateway.settings import GatewaySettings
from shared.auth import NexusAuthSettings
from shared.config import (
    OrchestratorTemporalSettings,
    TemporalSettings,
    ToolServiceSettings,
    secret_file_name,
    temporal_settings_for,
)
from shared.manifest import MANIFEST_FILE, discover_teams, find_team
from shared.telemetry import TelemetrySettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
ENV_DIR = DEPLOY / "env"
TARGETS = ("local", "compose", "cloud")

# service -> (compose service, deploy/<name>.Dockerfile, module it runs, dependency group)
WORKERS = {
    "orchestrator": ("orchestrator-worker", "orchestrator", "orchestrator.worker", "orchestrator"),
    "it": ("it-worker", "it", "it_service.worker", "it"),
    "finance": ("finance-worker", "finance", "finance_service.worker", "finance"),
}


def team_temporal_settings(package: str) -> type[TemporalSettings]:
    """A team's TEMPORAL_* defaults, from its manifest, as its worker builds them."""
    team = find_team(package)
    return temporal_settings_for(team.namespace, team.task_queue)


TEMPORAL_SETTINGS: dict[str, type[TemporalSettings]] = {
    "orchestrator": OrchestratorTemporalSettings,
    "it": team_temporal_settings("it_service"),
    "finance": team_temporal_settings("finance_service"),
}
# Settings classes each service reads, besides TEMPORAL_*. Every worker process sets up telemetry
# (shared.telemetry) before its first client: METRICS_BIND_ADDRESS, TELEMETRY_*, OTEL_EXPORTER_*.
SERVICE_SETTINGS: dict[str, list[type[BaseSettings]]] = {
    "orchestrator": [OrchestratorSettings, LLMSettings, NexusAuthSettings, TelemetrySettings],
    "it": [ToolServiceSettings, JiraSettings, NexusAuthSettings, TelemetrySettings],
    "finance": [ToolServiceSettings, QuoteSettings, NexusAuthSettings, TelemetrySettings],
}
LOG_KEYS = {"LOG_FORMAT", "LOG_LEVEL"}


def opentelemetry_sdk_keys() -> set[str]:
    """The standard OTEL_* variables the OpenTelemetry SDK reads by itself (OTEL_SERVICE_NAME,
    OTEL_EXPORTER_OTLP_HEADERS, ...): part of every worker's contract without a settings field."""
    import opentelemetry.sdk.environment_variables as otel_variables

    return {
        value
        for name, value in vars(otel_variables).items()
        if name.startswith("OTEL_") and isinstance(value, str)
    }


SettingsT = TypeVar("SettingsT", bound=BaseSettings)
SECRET_KEY = re.compile(r"(API_KEY|API_TOKEN|PASSWORD|SECRET)$")


# --- helpers ----------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = YAML(typ="safe").load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def build_paths(service: dict[str, Any], base: Path = ROOT) -> tuple[Path, Path]:
    build = service["build"]
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    context_dir = (base / context).resolve()
    return context_dir, context_dir / dockerfile


def dockerignore_admits(patterns: list[str], path: str) -> bool:
    """Whether a build context with these .dockerignore lines sends `path` (a file, relative to the
    context). The last matching line wins; a line matches the path or one of its parent
    directories; `*` stays within one path segment, as in Go's filepath.Match."""
    parts = path.split("/")
    admitted = True
    for line in patterns:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip("/").split("/")
        matched = False
        for depth in range(1, len(parts) + 1):
            candidate = parts[:depth]
            if pattern[:1] == ["**"]:
                matched = matched or fnmatch.fnmatchcase(candidate[-1], pattern[-1])
            elif len(candidate) == len(pattern):
                matched = matched or all(
                    fnmatch.fnmatchcase(c, p) for c, p in zip(candidate, pattern, strict=True)
                )
        if matched:
            admitted = exception
    return admitted


def copy_sources(path: Path) -> list[str]:
    sources = []
    for keyword, args in dockerfile_instructions(path):
        if keyword not in ("COPY", "ADD"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in args.split()):
            continue
        sources.extend(parts[:-1])
    return sources


def uv_sync_lines(path: Path) -> list[str]:
    return [args for kw, args in dockerfile_instructions(path) if kw == "RUN" and "uv sync" in args]


def cmd_module(path: Path) -> str:
    cmds = [args for kw, args in dockerfile_instructions(path) if kw == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    match = re.fullmatch(r'\["python", "-m", "([\w.]+)"\]', cmds[-1])
    assert match, f"{path.name}: CMD must be the exec form of `python -m <module>`: {cmds[-1]}"
    return match.group(1)


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (a ':' of a registry port is not a tag)
        return False
    return tag != "latest" and any(ch.isdigit() for ch in tag)


def group_packages(group: str) -> set[str]:
    """Package names a dependency group pulls in, following include-group."""
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    names: set[str] = set()
    for item in groups[group]:
        if isinstance(item, dict):
            names |= group_packages(item["include-group"])
        else:
            names.add(re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower())
    return names


def read_env(target: str, service: str) -> dict[str, str]:
    values = dotenv_values(ENV_DIR / target / f"{service}.env")
    assert all(v is not None for v in values.values()), "every line must be KEY=VALUE"
    return {k: v for k, v in values.items() if v is not None}


def settings_keys(settings_type: type[BaseSettings]) -> set[str]:
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings_type.model_fields}


def settings_from_env(settings_type: type[SettingsT], env: dict[str, str]) -> SettingsT:
    """Validate the env values with the service's settings class, ignoring the process environment."""
    prefix = str(settings_type.model_config.get("env_prefix", "")).upper()
    fields = {
        key[len(prefix) :].lower(): value
        for key, value in env.items()
        if key.startswith(prefix) and key[len(prefix) :].lower() in settings_type.model_fields
    }
    return settings_type.model_validate(fields)


def default_of(settings_type: type[BaseModel], field: str) -> Any:
    return settings_type.model_fields[field].default


# --- the compose file itself ------------------------------------------------------------------


def check_jsonschema() -> str:
    candidate = Path(sys.executable).parent / "check-jsonschema"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("check-jsonschema")
    assert found, "check-jsonschema is a dev dependency; run `uv sync`"
    return found


def run_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_spec() -> None:
    result = run_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    """The schema check above must be able to fail: a misspelt healthcheck key is caught."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "      interval: 5s\n" in text
    broken.write_text(text.replace("      interval: 5s\n", "      intervall: 5s\n", 1))
    assert run_compose_schema(broken).returncode != 0


def test_every_depends_on_target_is_a_service_with_a_fitting_condition() -> None:
    defined = services()
    for name, service in defined.items():
        for target, condition in depends_on(service).items():
            assert target in defined, f"{name} depends on undefined service {target}"
            assert target != name
            if condition == "service_healthy":
                assert "healthcheck" in defined[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                restart = str(defined[target].get("restart", "no"))
                assert restart == "no" or restart.startswith("on-failure"), (
                    f"{target} is waited on to complete, so it must be a one-shot, not restart={restart}"
                )


def test_start_order_has_no_cycle() -> None:
    graph = {name: set(depends_on(service)) for name, service in services().items()}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for target in graph[node]:
            visit(target, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


def test_images_are_pinned() -> None:
    images = [s["image"] for s in services().values() if "image" in s]
    assert images, "the stack pulls at least postgres, the Temporal server and the UI"
    for image in images:
        assert image_is_pinned(image), f"image {image} must carry a version tag, not latest"
    for dockerfile in DEPLOY.glob("*.Dockerfile"):
        stages: set[str] = set()
        for keyword, args in dockerfile_instructions(dockerfile):
            if keyword != "FROM":
                continue
            parts = [p for p in args.split() if not p.startswith("--")]
            if parts[0] not in stages:
                assert image_is_pinned(parts[0]), (
                    f"{dockerfile.name}: FROM {parts[0]} is not pinned"
                )
            if len(parts) == 3 and parts[1].lower() == "as":
                stages.add(parts[2])


def test_image_pin_check_catches_floating_tags() -> None:
    assert not image_is_pinned("postgres")
    assert not image_is_pinned("temporalio/server:latest")
    assert not image_is_pinned("registry:5000/temporalio/ui")
    assert image_is_pinned("temporalio/server:1.30.1")
    assert image_is_pinned("python:3.11-slim")


def test_build_contexts_dockerfiles_and_copied_files_exist() -> None:
    built = {name: s for name, s in services().items() if "build" in s}
    assert built, "the workers and the setup job are built from deploy/"
    for name, service in built.items():
        context, dockerfile = build_paths(service)
        assert context.is_dir(), f"{name}: build context {context} is missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        assert dockerfile.parent == DEPLOY, f"{name}: Dockerfiles live in deploy/"
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        ignore_lines = ignore.read_text().splitlines() if ignore.exists() else []
        for source in copy_sources(dockerfile):
            if "*" in source:  # a wildcard COPY (--parents keeps the folders): it must match
                assert list(context.glob(source)), (
                    f"{dockerfile.name}: COPY {source} matches nothing"
                )
            else:
                assert (context / source).exists(), (
                    f"{dockerfile.name}: COPY {source} does not exist"
                )
            if "*" in ignore_lines:
                assert f"!{source.rstrip('/')}" in ignore_lines, (
                    f"{ignore.name} excludes everything but does not re-include {source}"
                )


def test_env_files_referenced_by_compose_exist() -> None:
    ignored = [
        line.strip()
        for line in (ENV_DIR / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    referenced = 0
    for name, service in services().items():
        for path, required in env_files(service):
            referenced += 1
            if required:
                assert (COMPOSE_FILE.parent / path).is_file(), f"{name}: env_file {path} is missing"
            else:  # optional secrets files must never be committed by accident
                assert any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in ignored), (
                    f"{name}: optional env_file {path} is not git-ignored by deploy/env/.gitignore"
                )
    assert referenced >= len(WORKERS)


def test_bind_mounts_and_named_volumes_exist() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: mount {source} is missing"
            elif ":" in str(volume) or isinstance(volume, dict):
                assert source in declared, f"{name}: named volume {source} is not declared"


# --- Temporal server and its dynamic config ---------------------------------------------------


def temporal_service() -> tuple[str, dict[str, Any]]:
    matches = [
        (n, s) for n, s in services().items() if s.get("image", "").startswith("temporalio/server:")
    ]
    assert len(matches) == 1, "exactly one Temporal server (temporalio/server:<version>)"
    return matches[0]


def mounted_dynamic_config() -> tuple[Path, dict[str, Any]]:
    _, server = temporal_service()
    container_path = server["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    for volume in server.get("volumes", []):
        host, _, rest = volume.partition(":")
        if rest.split(":")[0] == container_path:
            path = COMPOSE_FILE.parent / host
            assert path.is_file() and path.parent == DEPLOY / "temporal"
            return path, YAML(typ="safe").load(path.read_text())
    raise AssertionError(f"DYNAMIC_CONFIG_FILE_PATH {container_path} is not a mounted file")


def test_dynamic_config_enables_async_nexus_callbacks() -> None:
    _, server = temporal_service()
    version = tuple(int(p) for p in server["image"].rpartition(":")[2].split(".")[:2])
    path, config = mounted_dynamic_config()
    for key, entries in config.items():
        assert isinstance(entries, list) and entries, f"{path.name}: {key} needs a list of values"
        assert all("value" in entry for entry in entries), f"{path.name}: {key} entry lacks value"

    def value(key: str) -> Any:
        return config[key][0]["value"] if key in config else None

    assert value("system.enableNexus") is not False, "Nexus must not be switched off"
    if version >= (1, 30):
        # Worker-targeted endpoints complete through the internal system callback URL.
        assert value("component.nexusoperations.useSystemCallbackURL") is True
    template = value("component.nexusoperations.callback.endpoint.template")
    if version < (1, 30) or template is not None:
        # The callback URL the template produces must pass the callback allow-list.
        assert template and "{{.NamespaceName}}" in template
        callback = urlsplit(template.replace("{{.NamespaceName}}", "orchestrator"))
        rules = value("component.callbacks.allowedAddresses") or []
        assert any(
            fnmatch.fnmatchcase(callback.netloc, rule["Pattern"])
            and (callback.scheme == "https" or rule.get("AllowInsecure", False))
            for rule in rules
        ), f"callback address {callback.netloc} is not allowed by {rules}"
        assert callback.hostname in services(), "the callback host is the server's service name"
    if version < (1, 26):
        assert value("system.enableNexus") is True


def test_self_hosted_server_is_tuned_like_the_embedded_one() -> None:
    from infrastructure.dev_server import LATENCY_DYNAMIC_CONFIG

    path, config = mounted_dynamic_config()
    for key, wanted in LATENCY_DYNAMIC_CONFIG.items():
        assert key in config, f"{path.name} lacks {key} (the 50 ms hand-off wait comes back)"
        assert config[key][0]["value"] == wanted, f"{path.name}: {key} should be {wanted}"


# --- setup job and workers --------------------------------------------------------------------


def test_setup_runs_once_after_the_server_is_healthy() -> None:
    temporal_name, _ = temporal_service()
    setup = services()["setup"]
    _, dockerfile = build_paths(setup)
    assert cmd_module(dockerfile) == "infrastructure.setup"
    assert str(setup.get("restart", "no")).startswith("on-failure")
    assert depends_on(setup).get(temporal_name) == "service_healthy"
    assert setup["environment"]["TEMPORAL_ADDRESS"] == f"{temporal_name}:7233"


@pytest.mark.parametrize("service", sorted(WORKERS))
def test_worker_container(service: str) -> None:
    compose_name, dockerfile_name, module, _ = WORKERS[service]
    worker = services()[compose_name]
    _, dockerfile = build_paths(worker)
    assert dockerfile == DEPLOY / f"{dockerfile_name}.Dockerfile"
    assert cmd_module(dockerfile) == module
    assert depends_on(worker).get("setup") == "service_completed_successfully"
    assert "healthcheck" in worker
    assert module in " ".join(worker["healthcheck"]["test"]), (
        "the health check looks for the worker"
    )
    required = [p for p, req in env_files(worker) if req]
    assert required == [f"deploy/env/compose/{service}.env"]


@pytest.mark.parametrize("service", ["it", "finance"])
def test_team_images_never_install_the_orchestrator_group(service: str) -> None:
    dockerfile = DEPLOY / f"{WORKERS[service][1]}.Dockerfile"
    instructions = dockerfile_instructions(dockerfile)
    assert not any("litellm" in args for _, args in instructions)
    syncs = uv_sync_lines(dockerfile)
    assert syncs, f"{dockerfile.name} installs with uv sync"
    for sync in syncs:
        assert "--frozen" in sync, "install exactly what uv.lock says"
        assert "--no-default-groups" in sync, (
            "the default dev group includes the orchestrator group"
        )
        assert "--all-groups" not in sync
        groups = re.findall(r"--group[= ](\S+)", sync)
        assert groups == [service], f"{dockerfile.name} installs groups {groups}"
        # LiteLLM (the `agents` group) only in the image of a team that publishes agents.
        publishes_agents = bool(find_team(f"{service}_service").agents)
        for group in groups:
            assert ("litellm" in group_packages(group)) == publishes_agents
            assert "fastapi" not in group_packages(group)
    assert not any(
        kw == "RUN" and re.search(r"pip install (?!--no-cache-dir uv==)", args)
        for kw, args in instructions
    ), "only uv itself is installed with pip"
    assert "orchestrator" not in " ".join(copy_sources(dockerfile))


def test_orchestrator_image_installs_its_group() -> None:
    dockerfile = DEPLOY / "orchestrator.Dockerfile"
    groups = [g for s in uv_sync_lines(dockerfile) for g in re.findall(r"--group[= ](\S+)", s)]
    assert groups == ["orchestrator"]
    assert "litellm" in group_packages("orchestrator")


def test_dockerfiles_copy_the_lockfile_and_sync_frozen() -> None:
    for dockerfile in DEPLOY.glob("*.Dockerfile"):
        sources = copy_sources(dockerfile)
        for needed in ("pyproject.toml", "uv.lock", "README.md"):
            assert needed in sources, f"{dockerfile.name} does not copy {needed}"
        assert all("--frozen" in s for s in uv_sync_lines(dockerfile))
        assert any(kw == "USER" for kw, _ in dockerfile_instructions(dockerfile)), "run as non-root"


# --- the HTTP gateway -------------------------------------------------------------------------

GATEWAY = "gateway"


def gateway_settings() -> GatewaySettings:
    return settings_from_env(GatewaySettings, container_env(ROOT, services()[GATEWAY]))


def test_gateway_runs_from_the_orchestrator_image_with_its_env_files() -> None:
    """Same image, env files and secrets volume as the orchestrator worker: the gateway and the
    worker agree on the Temporal namespace and task queue and on the conversation store."""
    gateway, worker = services()[GATEWAY], services()["orchestrator-worker"]
    assert gateway["build"] == worker["build"]
    assert service_command(ROOT, gateway) == ["python", "-m", "orchestrator.gateway"]
    assert env_files(gateway) == env_files(worker)
    assert gateway["volumes"] == worker["volumes"]
    assert all(str(volume).endswith(":ro") for volume in gateway["volumes"]), "it only reads it"
    gateway_env, worker_env = container_env(ROOT, gateway), container_env(ROOT, worker)
    for key in (
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "TEMPORAL_TASK_QUEUE",
        "ORCHESTRATOR_STORE_URL",
        "SECRETS_DIR",
    ):
        assert gateway_env[key] == worker_env[key], key
    temporal = settings_from_env(OrchestratorTemporalSettings, gateway_env)
    assert temporal.namespace == default_of(OrchestratorTemporalSettings, "namespace")
    assert temporal.task_queue == default_of(OrchestratorTemporalSettings, "task_queue")
    assert depends_on(gateway) == depends_on(worker)
    assert gateway.get("restart") == "unless-stopped"
    assert gateway.get("init") is True, "SIGTERM reaches the server, which stops gracefully"
    # Its spans (if it ever sends any) and its (absent) metrics are not the worker's.
    assert gateway_env["OTEL_SERVICE_NAME"] != worker_env["OTEL_SERVICE_NAME"]
    assert gateway_env["METRICS_BIND_ADDRESS"] == ""


def test_gateway_is_published_on_the_host_loopback_only() -> None:
    """Inside its container it listens on every interface (else the published port reaches
    nothing); on the host, on 127.0.0.1 only: there is no TLS in front of it here."""
    settings = gateway_settings()
    assert settings.host == "0.0.0.0"
    assert services()[GATEWAY]["ports"] == [f"127.0.0.1:{settings.port}:{settings.port}"]


def test_services_we_build_publish_on_the_host_loopback_only() -> None:
    for name, service in services().items():
        if "build" in service:
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), (
                    f"{name} publishes {port} beyond loopback"
                )


def test_gateway_health_check_gets_its_health_route() -> None:
    from orchestrator.gateway.__main__ import server_config
    from orchestrator.gateway.app import create_app

    gateway = services()[GATEWAY]
    settings = gateway_settings()
    test = gateway["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "/usr/local/bin/healthcheck.py", "orchestrator.gateway"]
    assert test[4:] == ["--get", f"http://127.0.0.1:{settings.port}/healthz"]
    _, dockerfile = build_paths(gateway)
    assert image_copies(dockerfile, ROOT)[test[2]] == DEPLOY / "healthcheck.py"
    app = create_app(settings, typing.cast(Any, None))
    assert "/healthz" in {getattr(route, "path", "") for route in app.routes}
    # `docker stop` waits long enough for uvicorn's graceful shutdown (open SSE streams).
    graceful = server_config(app, settings).timeout_graceful_shutdown or 0
    assert seconds(gateway["stop_grace_period"], 10.0) > graceful


def load_healthcheck_script() -> Any:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_check_script_wants_ok_true_from_the_route() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    answers = {"/healthz": (200, b'{"ok": true}'), "/sick": (503, b"{}"), "/no": (200, b"{}")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers.get(self.path, (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    healthcheck = load_healthcheck_script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert healthcheck.http_healthy(f"{url}/healthz") is None
        assert healthcheck.http_healthy(f"{url}/sick") == "HTTP 503"
        assert healthcheck.http_healthy(f"{url}/no") is not None
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.http_healthy(f"{url}/healthz").startswith("unreachable")
    assert healthcheck.main(["healthcheck.py", "orchestrator.gateway", "--get"]) == 1


def test_orchestrator_image_has_the_agent_cli(tmp_path: Path) -> None:
    """`docker compose exec gateway agent keys create alice` works: the image copies deploy/agent
    into a bin folder on PATH (the project itself is not installed there), and it runs the CLI
    from the sources in the image's WORKDIR."""
    dockerfile = DEPLOY / "orchestrator.Dockerfile"
    assert image_copies(dockerfile, ROOT)["/usr/local/bin/agent"] == DEPLOY / "agent"
    copy = [a for kw, a in dockerfile_instructions(dockerfile) if kw == "COPY" and "agent" in a]
    assert copy and "--chmod=0755" in copy[0], "an executable, for exec"
    script = (DEPLOY / "agent").read_text()
    assert script.startswith("#!/usr/bin/env python\n"), "the image's venv python is first on PATH"
    assert f'sys.path.insert(0, "{workdir(ROOT, services()[GATEWAY])}")' in script
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "agent"), "keys", "create", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "agent keys create" in result.stdout  # the usage line names the command


# --- env files --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("service", sorted(WORKERS))
def test_env_file_matches_the_service_contract(target: str, service: str) -> None:
    env = read_env(target, service)
    settings_type = TEMPORAL_SETTINGS[service]

    known = settings_keys(settings_type) | LOG_KEYS | opentelemetry_sdk_keys()
    for extra in SERVICE_SETTINGS[service]:
        known |= settings_keys(extra)
    assert set(env) <= known, f"unknown variables: {sorted(set(env) - known)}"
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE"} | LOG_KEYS <= set(env)
    assert all(value != "" for value in env.values()), "leave unused settings commented out"

    settings = settings_from_env(settings_type, env)
    assert settings.task_queue == default_of(settings_type, "task_queue")
    if target == "cloud":
        assert env["TEMPORAL_TLS"] == "true"
        assert "TEMPORAL_API_KEY" in env
    else:
        assert settings.namespace == default_of(settings_type, "namespace")
        assert "TEMPORAL_API_KEY" not in env
    assert env["LOG_FORMAT"] == ("console" if target == "local" else "json")

    for extra in SERVICE_SETTINGS[service]:
        settings_from_env(extra, env)
    if service != "orchestrator":
        assert "TOOL_FAST_PATH_BUDGET_MS" in env


@pytest.mark.parametrize("target", TARGETS)
def test_env_files_hold_no_secrets(target: str) -> None:
    for path in (ENV_DIR / target).glob("*.env"):
        for key, value in (dotenv_values(path) or {}).items():
            if SECRET_KEY.search(key):
                assert value and value.startswith("<") and value.endswith(">"), (
                    f"{path.relative_to(ROOT)}: {key} must be a <placeholder>, not a value"
                )


def test_compose_env_files_point_at_the_compose_server() -> None:
    temporal_name, server = temporal_service()
    for service in WORKERS:
        address = read_env("compose", service)["TEMPORAL_ADDRESS"]
        host, _, port = address.rpartition(":")
        assert host == temporal_name, f"{service}: {address} is not the compose server"
        assert port == "7233"
    assert "7233:7233" in [str(p) for p in server.get("ports", [])]
    for service in WORKERS:
        host = read_env("local", service)["TEMPORAL_ADDRESS"].rpartition(":")[0]
        assert host in ("localhost", "127.0.0.1")


def compose_teams() -> dict[str, str]:
    """Team service -> endpoint, for the teams docker-compose.yml runs a worker for."""
    modules = {
        " ".join(service.get("healthcheck", {}).get("test", [])) for service in services().values()
    }
    return {
        team.service: team.endpoint
        for team in discover_teams()
        if any(f"{team.package}.worker" in test for test in modules)
    }


def test_setup_creates_what_the_team_manifests_declare() -> None:
    """Setup's defaults come from the manifests; every team has a namespace and an endpoint that
    targets its task queue, and the orchestrator's namespace comes first."""
    stack = StackSettings()
    teams = discover_teams()
    assert {"it", "finance"} <= {team.service for team in teams}
    orchestrator = default_of(OrchestratorTemporalSettings, "namespace")
    assert stack.namespaces == [orchestrator, *(team.namespace for team in teams)]
    assert [(e.name, e.namespace, e.task_queue) for e in stack.endpoints] == [
        (team.endpoint, team.namespace, team.task_queue) for team in teams
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_env_files_agree_with_the_setup_endpoints(target: str) -> None:
    """The orchestrator calls endpoints setup creates, which target the team queues."""
    endpoints = StackSettings().endpoints
    namespaces = StackSettings().namespaces
    env = read_env(target, "orchestrator")
    if target == "local":
        # Run from the repository, the default is read from the manifests: nothing to keep in sync.
        assert "ORCHESTRATOR_TOOL_ENDPOINTS" not in env
    else:
        # The orchestrator image holds no team folder (its default is empty): the file names them,
        # exactly the teams this target runs.
        names = env["ORCHESTRATOR_TOOL_ENDPOINTS"].split(",")
        assert len(names) == len(set(names))
        assert set(names) <= {e.name for e in endpoints}, "every endpoint is one setup creates"
        assert set(names) == set(compose_teams().values())
    for service, settings_type in TEMPORAL_SETTINGS.items():
        namespace = default_of(settings_type, "namespace")
        assert namespace in namespaces, f"setup does not create the {service} namespace"
        if service == "orchestrator":
            continue
        served = [e for e in endpoints if e.namespace == namespace]
        assert len(served) == 1, f"one endpoint targets the {namespace} namespace"
        assert read_env(target, service)["TEMPORAL_TASK_QUEUE"] == served[0].task_queue


def test_orchestrator_default_endpoints_come_from_the_manifests_without_team_code() -> None:
    """Read as data in a fresh interpreter: no team module is imported to build the default."""
    probe = (
        "import json, sys\n"
        "from orchestrator.config import OrchestratorSettings\n"
        "endpoints = OrchestratorSettings().tool_endpoints\n"
        "teams = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0].endswith('_service')})\n"
        "print(json.dumps([endpoints, teams]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    endpoints, imported = json.loads(result.stdout.splitlines()[-1])
    assert endpoints == [team.endpoint for team in discover_teams()]
    assert imported == [], f"the orchestrator imported team code: {imported}"
    overridden = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "ORCHESTRATOR_TOOL_ENDPOINTS": "a-tools,b-tools"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(overridden.stdout.splitlines()[-1])[0] == ["a-tools", "b-tools"]


def test_setup_image_carries_the_manifests_and_no_team_code() -> None:
    dockerfile = DEPLOY / "setup.Dockerfile"
    ignore = (DEPLOY / "setup.Dockerfile.dockerignore").read_text().splitlines()
    assert f"*/{MANIFEST_FILE}" in copy_sources(dockerfile)
    copies = [args for kw, args in dockerfile_instructions(dockerfile) if kw == "COPY"]
    assert any("--parents" in args and MANIFEST_FILE in args for args in copies), (
        "COPY --parents keeps each manifest in its team's folder, where discovery looks"
    )
    syntax = dockerfile.read_text().splitlines()[0]
    version = re.fullmatch(r"# syntax=docker/dockerfile:(\d+)\.(\d+)", syntax)
    assert version and (int(version[1]), int(version[2])) >= (1, 20), (
        "COPY --parents is generally available from Dockerfile 1.20"
    )
    for team in discover_teams():
        assert dockerignore_admits(ignore, f"{team.package}/{MANIFEST_FILE}"), team.package
        for code in (ROOT / team.package).glob("*.py"):
            assert not dockerignore_admits(ignore, f"{team.package}/{code.name}"), code


def test_dockerignore_evaluation() -> None:
    """The evaluator above must be able to say no, and yes inside an excluded folder."""
    lines = ["*", "!shared", "!*/team.toml", "infrastructure/terraform", "**/__pycache__"]
    assert dockerignore_admits(lines, "shared/config.py")
    assert dockerignore_admits(lines, "it_service/team.toml")
    assert not dockerignore_admits(lines, "it_service/tools.py")
    assert not dockerignore_admits(lines, "it_service/sub/team.toml")
    assert not dockerignore_admits(lines, "shared/__pycache__/config.pyc")
    assert not dockerignore_admits(lines, "infrastructure/terraform/main.tf")


def test_orchestrator_image_holds_no_team_folder() -> None:
    sources = copy_sources(DEPLOY / "orchestrator.Dockerfile")
    assert not any(
        MANIFEST_FILE in source or source.rstrip("/").endswith("_service") for source in sources
    )


# --- state lives where it survives -------------------------------------------------------------
# A container is recreated by every `docker compose up --build`: a file a service writes inside it
# is gone. So every file a service's settings name (a Path setting, or a sqlite:/// URL) must sit
# on a named volume, or be a compose secret (read-only input, /run/secrets). Which settings a
# service loads is derived, not listed: the settings classes defined by the project modules its
# command imports (statically, including imports inside functions), plus a team's manifest code.

PROJECT_PACKAGES = {
    path.parent.name for path in ROOT.glob("*/__init__.py") if not path.parent.name.startswith(".")
}
SECRETS_MOUNT = PurePosixPath("/run/secrets")


def project_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The project modules `module` imports, transitively, read from the source (nothing runs)."""
    seen = set() if seen is None else seen
    if module in seen or module.split(".")[0] not in PROJECT_PACKAGES:
        return seen
    source = ROOT.joinpath(*module.split("."))
    path = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
    if not path.is_file():
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                project_imports(".".join(parts[:depth]), seen)
    return seen


def service_command(base: Path, service: dict[str, Any]) -> list[str]:
    """What the container runs: compose's command, else the Dockerfile's CMD (exec form)."""
    if "command" in service:
        command = service["command"]
        return command.split() if isinstance(command, str) else list(command)
    _, dockerfile = build_paths(service, base)
    cmds = [args for kw, args in dockerfile_instructions(dockerfile) if kw == "CMD"]
    command = json.loads(cmds[-1])
    assert isinstance(command, list)
    return [str(part) for part in command]


def loaded_settings(base: Path, service: dict[str, Any]) -> list[type[BaseSettings]]:
    command = service_command(base, service)
    assert command[:2] == ["python", "-m"], f"not a `python -m` command: {command}"
    entry, args = command[2], command[3:]
    modules = project_imports(entry)
    if (ROOT.joinpath(*entry.split(".")) / "__main__.py").is_file():  # `python -m <package>`
        project_imports(f"{entry}.__main__", modules)
    package = entry.split(".")[0]
    team_package = args[0] if entry == "shared.worker" and args else package
    if (ROOT / team_package / MANIFEST_FILE).is_file():  # a team worker also runs its code
        for path in find_team(team_package).import_paths():
            project_imports(path.partition(":")[0], modules)
    found: list[type[BaseSettings]] = []
    for name in sorted(modules):
        for value in vars(importlib.import_module(name)).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value.__module__ == name
            ):
                found.append(value)
    return found


def container_env(base: Path, service: dict[str, Any]) -> dict[str, str]:
    """The variables the container starts with: Dockerfile ENV, env files, then `environment`."""
    env: dict[str, str] = {}
    if "build" in service:
        _, dockerfile = build_paths(service, base)
        for keyword, args in dockerfile_instructions(dockerfile):
            if keyword == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    env[key] = value
    for path, required in env_files(service):
        if required or (base / path).is_file():
            env.update({k: v for k, v in dotenv_values(base / path).items() if v is not None})
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({str(k): str(v) for k, v in environment.items()})
    return env


def mentions_path(annotation: Any) -> bool:
    if annotation is Path or annotation is PurePath:
        return True
    return any(mentions_path(arg) for arg in typing.get_args(annotation))


def setting_paths(settings_type: type[BaseSettings], env: dict[str, str]) -> list[tuple[str, str]]:
    """(variable, file) for every file this settings class would name in that environment."""
    prefix = str(settings_type.model_config.get("env_prefix", "")).upper()
    paths = []
    for field, info in settings_type.model_fields.items():
        variable = f"{prefix}{field}".upper()
        value: Any = env.get(variable, info.default)
        if value is None or value is PydanticUndefined:
            continue
        if isinstance(value, str) and value.startswith("sqlite:///"):
            paths.append((variable, value.removeprefix("sqlite:///")))
        elif mentions_path(info.annotation):
            paths.append((variable, str(value)))
    return paths


def workdir(base: Path, service: dict[str, Any]) -> PurePosixPath:
    if "working_dir" in service:
        return PurePosixPath(service["working_dir"])
    current = PurePosixPath("/")
    if "build" in service:
        _, dockerfile = build_paths(service, base)
        for keyword, args in dockerfile_instructions(dockerfile):
            if keyword == "WORKDIR":
                current = current / args
    return current


def volume_mounts(service: dict[str, Any], declared: set[str]) -> list[PurePosixPath]:
    """Where the service mounts a named (declared) volume."""
    targets = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source") in declared:
                targets.append(PurePosixPath(volume["target"]))
            continue
        source, _, rest = str(volume).partition(":")
        if source in declared:
            targets.append(PurePosixPath(rest.split(":")[0]))
    return targets


def state_outside_volumes(data: dict[str, Any], base: Path = ROOT) -> list[str]:
    """Every file a built service's settings name that is neither on a named volume nor a secret."""
    declared = set(data.get("volumes") or {})
    problems = []
    for name, service in data["services"].items():
        if "build" not in service:
            continue  # images we do not build (postgres, Temporal) keep their state on volumes
        env = container_env(base, service)
        mounts = volume_mounts(service, declared)
        for settings_type in loaded_settings(base, service):
            for variable, raw in setting_paths(settings_type, env):
                path = workdir(base, service) / raw
                if path.is_relative_to(SECRETS_MOUNT) or any(
                    path.is_relative_to(mount) for mount in mounts
                ):
                    continue
                problems.append(
                    f"{name}: {variable} ({settings_type.__name__}) puts {path} inside the "
                    "container, lost when it is recreated: use a named volume or a database"
                )
    return problems


def test_every_state_path_a_service_uses_is_on_a_volume() -> None:
    assert state_outside_volumes(compose()) == []


def test_state_paths_are_derived_from_the_settings_each_service_loads() -> None:
    data = compose()
    orchestrator = loaded_settings(ROOT, data["services"]["orchestrator-worker"])
    assert OrchestratorSettings in orchestrator and NexusAuthSettings in orchestrator
    it = loaded_settings(ROOT, data["services"]["it-worker"])
    assert ToolServiceSettings in it and JiraSettings in it
    setup = [t.__name__ for t in loaded_settings(ROOT, data["services"]["setup"])]
    assert "StoreSetupSettings" in setup and "DevStackSettings" not in setup
    env = container_env(ROOT, data["services"]["it-worker"])
    assert ("TOOL_LEDGER_PATH", "/var/lib/agent/it/ledger.db") in setting_paths(
        ToolServiceSettings, env
    )


@pytest.mark.parametrize("service", sorted(WORKERS))
def test_every_worker_loads_the_settings_its_env_file_is_checked_against(service: str) -> None:
    """SERVICE_SETTINGS, which the env-file check uses, is written by hand: each class in it must be
    one the worker's command really loads (TelemetrySettings included)."""
    loaded = loaded_settings(ROOT, services()[WORKERS[service][0]])
    missing = [t.__name__ for t in SERVICE_SETTINGS[service] if t not in loaded]
    assert missing == []


def with_change(service: str, **changes: Any) -> dict[str, Any]:
    variant = copy.deepcopy(compose())
    for key, value in changes.items():
        if value is None:
            variant["services"][service].pop(key, None)
        else:
            variant["services"][service][key] = value
    return variant


def test_state_check_bites_on_a_store_inside_the_container() -> None:
    """The default store (sqlite:///.run/conversations.db, under WORKDIR /app) is refused..."""
    store_in_container = with_change(
        "orchestrator-worker",
        environment={"ORCHESTRATOR_STORE_URL": "sqlite:///.run/conversations.db"},
    )
    problems = state_outside_volumes(store_in_container)
    assert len(problems) == 1 and "ORCHESTRATOR_STORE_URL" in problems[0], problems
    assert "/app/.run/conversations.db" in problems[0]
    # ...as is the IT ledger once its volume is gone...
    problems = state_outside_volumes(with_change("it-worker", volumes=None))
    assert len(problems) == 1 and "TOOL_LEDGER_PATH" in problems[0], problems
    # ...while a SQLite store on a named volume would be accepted.
    on_volume = with_change(
        "orchestrator-worker",
        environment={"ORCHESTRATOR_STORE_URL": "sqlite:////var/lib/agent/store/c.db"},
        volumes=["orchestrator-secrets:/var/lib/agent/store"],
    )
    assert state_outside_volumes(on_volume) == []


def test_orchestrator_store_is_its_own_database_on_the_compose_postgresql() -> None:
    """The store URL names the postgresql service, and the database and user the setup job makes;
    its password is nowhere in the repository: the setup job writes it into the volume that the
    orchestrator mounts as its SECRETS_DIR."""
    data = compose()
    setup = data["services"]["setup"]
    orchestrator = data["services"]["orchestrator-worker"]
    env = container_env(ROOT, orchestrator)
    store = urlsplit(env["ORCHESTRATOR_STORE_URL"])
    assert store.scheme == "postgresql" and store.password is None
    postgres = [n for n, s in services().items() if str(s.get("image", "")).startswith("postgres:")]
    assert [store.hostname] == postgres
    assert depends_on(orchestrator).get(postgres[0]) == "service_healthy"
    assert depends_on(setup).get(postgres[0]) == "service_healthy"
    setup_env = setup["environment"]
    assert store.username == setup_env["STORE_SETUP_USER"]
    assert store.path == "/" + setup_env["STORE_SETUP_DATABASE"]
    assert urlsplit(setup_env["STORE_SETUP_ADMIN_URL"]).hostname == postgres[0]
    declared = set(data.get("volumes") or {})
    password_dir = PurePosixPath(setup_env["STORE_SETUP_PASSWORD_DIR"])
    secrets_dir = PurePosixPath(env["SECRETS_DIR"])
    assert password_dir in volume_mounts(setup, declared)
    assert secrets_dir in volume_mounts(orchestrator, declared)
    shared_volume = {
        str(v).split(":")[0] for v in setup["volumes"] if str(v).split(":")[1] == str(password_dir)
    }
    assert shared_volume == {
        str(v).split(":")[0]
        for v in orchestrator["volumes"]
        if str(v).split(":")[1] == str(secrets_dir)
    }
    assert any(str(v).endswith(":ro") for v in orchestrator["volumes"]), (
        "the orchestrator only reads it"
    )
    assert STORE_PASSWORD_FILE == secret_file_name(OrchestratorSettings, "store_password")


@pytest.mark.parametrize("name", ["setup", "it-worker"])
def test_volume_mount_points_belong_to_the_app_user(name: str) -> None:
    """A new named volume takes the owner of its mount point in the image: the non-root app user
    must own the directories it writes to, or the first write fails."""
    service = services()[name]
    _, dockerfile = build_paths(service)
    runs = " ".join(args for kw, args in dockerfile_instructions(dockerfile) if kw == "RUN")
    for mount in volume_mounts(service, set(compose().get("volumes") or {})):
        assert f"mkdir -p {mount}" in runs and f"chown app:app {mount}" in runs, (
            f"{dockerfile.name}: the mount point {mount} is not created for the app user"
        )

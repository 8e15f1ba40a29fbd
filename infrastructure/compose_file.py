"""What `docker-compose.yml` and its Dockerfiles say a service runs: start order, command, image
environment, copied paths, env files. Read by the compose rehearsal and the offline compose checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


class ComposeError(Exception):
    """A service did not start, a step failed or a check did not hold: one line saying which."""


# ---- ----------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeError(f"{path} has no services")
    return data


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def start_order(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every service after the ones it depends on (ties in file order)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ComposeError(f"depends_on cycle: {' -> '.join((*path, name))}")
        if name in order:
            return
        for target in depends_on(services[name]):
            visit(target, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), line continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full, pending = pending + stripped, ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_of(service: Mapping[str, Any], base: Path) -> Path:
    build = service["build"]
    if isinstance(build, str):
        return base / build / "Dockerfile"
    return base / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def _exec_form(args: str, what: str) -> list[str]:
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise ComposeError(f"{what} must be in exec form (a JSON list): {args}")
    return list(value)


def _as_list(value: Any) -> list[str]:
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def image_command(service: Mapping[str, Any], dockerfile: Path) -> list[str]:
    """What the container runs: compose's entrypoint/command, else the Dockerfile's."""
    instructions = dockerfile_instructions(dockerfile)
    entrypoint = [args for kw, args in instructions if kw == "ENTRYPOINT"]
    cmd = [args for kw, args in instructions if kw == "CMD"]
    head = _as_list(service["entrypoint"]) if "entrypoint" in service else []
    if not head and entrypoint:
        head = _exec_form(entrypoint[-1], f"{dockerfile.name} ENTRYPOINT")
    if "command" in service:
        return [*head, *_as_list(service["command"])]
    return [*head, *(_exec_form(cmd[-1], f"{dockerfile.name} CMD") if cmd else [])]


def image_env(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's ENV of its last stage (the image's own), KEY=VALUE form."""
    import shlex

    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            env = {}
        elif keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_copies(dockerfile: Path, base: Path) -> dict[str, Path]:
    """Files the image copies from the build context to an absolute path: destination -> source."""
    copies: dict[str, Path] = {}
    for keyword, args in dockerfile_instructions(dockerfile):
        parts = args.split()
        if keyword != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        if len(paths) == 2 and paths[1].startswith("/"):
            copies[paths[1]] = base / paths[0]
    return copies


def env_files(service: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """env_file entries as (path, required)."""
    raw = service.get("env_file", [])
    entries = [raw] if isinstance(raw, str) else raw
    result = []
    for entry in entries:
        if isinstance(entry, str):
            result.append((entry, True))
        else:
            result.append((entry["path"], entry.get("required", True) not in (False, "false")))
    return result


def compose_env(service: Mapping[str, Any], base: Path) -> dict[str, str]:
    """The container's variables: the image's ENV, the env files in order, then `environment`."""
    env = image_env(dockerfile_of(service, base)) if "build" in service else {}
    env.pop("PATH", None)  # the image's venv; here the interpreter runs from this environment
    for path, required in env_files(service):
        if (base / path).is_file():
            env.update({k: v for k, v in dotenv_values(base / path).items() if v is not None})
        elif required:
            raise ComposeError(f"env_file {path} is missing")
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({str(k): str(v) for k, v in environment.items()})
    return env


def seconds(value: Any, default: float) -> float:
    """A compose duration (`30s`, `1m30s`, `500ms`) in seconds."""
    if value is None:
        return default
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total or default

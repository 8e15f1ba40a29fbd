"""`make new-service NAME=hr`: a new team, working, from `team_template/`.

    python -m infrastructure.scaffold hr

writes `hr_service/` (team.toml, tools.py with one example tool, worker.py) and
`tests/test_hr_service.py`, with every name derived from NAME: service and namespace `hr`, task
queue and Nexus endpoint `hr-tools`, environment prefix `HR_`. Nothing else is edited: `make up`
finds the manifest, creates the namespace and endpoint, starts the worker, and the orchestrator
discovers the endpoint. A bad or taken name is refused with one line and nothing is written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from shared.config import ConfigError
from shared.manifest import MANIFEST_FILE, default_root, discover_teams

# Short, lower-case letters and digits: the name becomes a namespace (Temporal Cloud: 2-39
# characters, no "_"), an endpoint, a Python package, an env prefix and a process name, and this
# is the one shape that is valid as all of them unchanged.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{1,19}")
# Names the platform itself uses: the orchestrator's namespace and process, the dev server's
# process, the orchestrator's local tools' service, and the SDK's folder.
RESERVED_NAMES = frozenset({"orchestrator", "temporal", "local", "shared", "default"})
TEMPLATE_DIR = "team_template"


class ScaffoldError(Exception):
    """Why a name is refused: one line."""


@dataclass(frozen=True)
class TeamNames:
    """Everything named after NAME, in one place."""

    service: str

    @property
    def package(self) -> str:
        return f"{self.service}_service"

    @property
    def namespace(self) -> str:
        return self.service

    @property
    def task_queue(self) -> str:
        return f"{self.service}-tools"

    @property
    def endpoint(self) -> str:
        return f"{self.service}-tools"

    @property
    def env_prefix(self) -> str:
        return f"{self.service.upper()}_"

    @property
    def tool(self) -> str:
        return f"{self.service}_greet"

    def fields(self) -> dict[str, str]:
        return {
            "service": self.service,
            "package": self.package,
            "namespace": self.namespace,
            "task_queue": self.task_queue,
            "endpoint": self.endpoint,
            "env_prefix": self.env_prefix,
            "tool": self.tool,
        }

    def files(self) -> dict[str, str]:
        """Output path (relative to the repository) -> template file name."""
        return {
            f"{self.package}/__init__.py": "__init__.py.tmpl",
            f"{self.package}/{MANIFEST_FILE}": "team.toml.tmpl",
            f"{self.package}/tools.py": "tools.py.tmpl",
            f"{self.package}/worker.py": "worker.py.tmpl",
            f"tests/test_{self.package}.py": "test_service.py.tmpl",
        }


def check_name(name: str, root: Path) -> TeamNames:
    """The names for NAME, or ScaffoldError if NAME is malformed, reserved or taken."""
    if not name:
        raise ScaffoldError("usage: make new-service NAME=<name>   (e.g. NAME=hr)")
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(
            f"'{name}' is not a team name: use 2-20 lower-case letters and digits, "
            "starting with a letter (e.g. hr)"
        )
    if name in RESERVED_NAMES:
        raise ScaffoldError(f"'{name}' is reserved by the platform; choose another team name")
    names = TeamNames(name)
    if (root / names.package).exists():
        raise ScaffoldError(f"{names.package}/ already exists; choose another team name")
    for relative in names.files():
        if (root / relative).exists():
            raise ScaffoldError(f"{relative} already exists; choose another team name")
    try:
        teams = discover_teams(root)
    except ConfigError as err:
        raise ScaffoldError(f"fix the existing teams first: {err}") from None
    for team in teams:
        taken = {team.service, team.namespace, team.endpoint, team.task_queue}
        clash = sorted(taken & {names.service, names.namespace, names.endpoint, names.task_queue})
        if clash:
            raise ScaffoldError(
                f"'{clash[0]}' is already used by {team.package}/{MANIFEST_FILE}; "
                "choose another team name"
            )
    return names


def scaffold(name: str, root: Path) -> TeamNames:
    """Write the new team's files under `root` and return its names."""
    names = check_name(name, root)
    template_dir = root / TEMPLATE_DIR
    rendered = {
        relative: Template((template_dir / template).read_text()).substitute(names.fields())
        for relative, template in names.files().items()
    }  # every file rendered before any is written: a broken template writes nothing
    for relative, text in rendered.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return names


def main(argv: Sequence[str]) -> int:
    name = argv[1].strip() if len(argv) > 1 else ""
    root = default_root()  # the repository: where discovery looks for team folders
    try:
        names = scaffold(name, root)
    except ScaffoldError as err:
        print(f"error: {err}" if name else str(err), file=sys.stderr)
        return 2
    print(
        f"Created team '{names.service}' in {names.package}/: namespace {names.namespace}, "
        f"task queue and Nexus endpoint {names.endpoint}."
    )
    for relative in names.files():
        print(f"  {relative}")
    print(
        f"Next: edit {names.package}/tools.py (the example tool is {names.tool}), "
        f"`uv run pytest tests/test_{names.package}.py`, then `make up` serves it (on a "
        "running stack it starts the new worker and restarts the orchestrator to discover it)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

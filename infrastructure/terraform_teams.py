"""`make terraform-teams`: write the Terraform `teams` variable from the team manifests.

    python -m infrastructure.terraform_teams [PATH]   # default infrastructure/terraform/teams.auto.tfvars.json

Terraform cannot read TOML, so the teams reach it as a generated `*.auto.tfvars.json`, which
`terraform plan` loads by itself. The file is derived data (git-ignored): regenerate it after adding
or changing a team, never edit it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.config import ConfigError
from shared.manifest import TeamManifest, discover_teams

DEFAULT_PATH = Path(__file__).resolve().parent / "terraform" / "teams.auto.tfvars.json"


def terraform_teams(teams: Sequence[TeamManifest]) -> dict[str, Any]:
    """The tfvars document: {"teams": {service: {namespace, task_queue, endpoint, description}}}."""
    return {
        "teams": {
            team.service: {
                "namespace": team.namespace,
                "task_queue": team.task_queue,
                "endpoint": team.endpoint,
                "description": team.description,
            }
            for team in teams
        }
    }


def main(argv: Sequence[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
    try:
        teams = discover_teams()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    path.write_text(json.dumps(terraform_teams(teams), indent=2) + "\n")
    print(f"Wrote {len(teams)} team(s) to {path}: {', '.join(t.service for t in teams)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

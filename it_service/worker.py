"""`python -m it_service.worker`: the IT team's tool service."""

from __future__ import annotations

import sys

from it_service.tools import registry
from it_service.workflows import ITSessionWorkflow
from shared.config import ITTemporalSettings
from shared.worker import serve_team

if __name__ == "__main__":
    sys.exit(serve_team(registry, ITTemporalSettings, workflows=[ITSessionWorkflow]))

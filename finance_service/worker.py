"""`python -m finance_service.worker`: the Finance team's tool service."""

from __future__ import annotations

import sys

from finance_service.tools import registry
from shared.config import FinanceTemporalSettings
from shared.worker import serve_team

if __name__ == "__main__":
    sys.exit(serve_team(registry, FinanceTemporalSettings))

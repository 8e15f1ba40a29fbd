"""`python -m it_service.worker`: this team's tool service, as its team.toml declares it."""

import sys

from shared.worker import serve_package

if __name__ == "__main__":
    sys.exit(serve_package(__package__ or "it_service"))

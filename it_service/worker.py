"""`python -m it_service.worker`: this team's tool service, as its team.toml declares it."""

from shared.temporal import exit_process
from shared.worker import serve_package

if __name__ == "__main__":
    exit_process(serve_package(__package__ or "it_service"))

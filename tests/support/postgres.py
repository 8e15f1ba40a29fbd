"""A throw-away PostgreSQL server for the store tests: infrastructure.postgres, with trust auth.

`make test` installs Debian's packages when missing (see the Makefile's `system-deps`); the
compose rehearsal starts its server with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infrastructure.postgres import PostgresUnavailable, postgres_server

__all__ = ["PostgresUnavailable", "running_postgres"]


@contextmanager
def running_postgres() -> Iterator[str]:
    """Yield a postgresql:// URL for a fresh server."""
    with postgres_server() as server:
        yield server.url()

"""`agent keys`: API keys for the gateway (create, list, revoke)."""

from __future__ import annotations

import typer

keys_app = typer.Typer(
    name="keys",
    help="API keys for the HTTP gateway: create, list, revoke.",
    no_args_is_help=True,
)

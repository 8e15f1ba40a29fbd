"""`agent keys`: API keys for the gateway (create, list, revoke).

Keys live in the conversation store (ORCHESTRATOR_STORE_URL, like `agent store` and `agent
usage`), hashed: a key is shown once, when it is made, and cannot be shown again. No Temporal
connection is needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.client import utf8_problem
from orchestrator.config import OrchestratorSettings
from orchestrator.gateway.auth import (
    InvalidKeyInput,
    check_key_id,
    check_label,
    check_user_name,
    create_key,
    now_iso,
)
from orchestrator.render import err, out, print_error
from orchestrator.store import ConversationStore, open_store
from orchestrator.store_accounts import ApiKeyRecord
from shared.config import ConfigError, load_settings

T = TypeVar("T")
BAD_INPUT = 2  # exit code for arguments that cannot be used, like click's own usage errors

keys_app = typer.Typer(
    name="keys",
    help="API keys for the HTTP gateway: create, list, revoke.",
    no_args_is_help=True,
)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Argument(help="Who the key is for (the gateway's user name).")],
    label: Annotated[
        str, typer.Option("--label", help="What the key is for, shown by `agent keys list`.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Make an API key for USER and print it once (only its hash is kept)."""
    _check_text("user name", user)
    _check_text("label", label)
    try:
        check_user_name(user)
        check_label(label)
    except InvalidKeyInput as error:
        _fail(str(error), BAD_INPUT)
    new = _with_store(lambda store: create_key(store, user, label), create=True)
    if as_json:
        print(json.dumps({"key": new.key, **_key_json(new.record)}, ensure_ascii=False))
        return
    print(new.key)
    _note(
        f"key {new.record.key_id} for {user}: shown once, keep it now; revoke it with "
        f"`agent keys revoke {new.record.key_id}`"
    )


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The keys (never their secrets): id, user, label, created, revoked."""
    if user is not None:
        _check_text("user name", user)
        try:
            check_user_name(user)
        except InvalidKeyInput as error:
            _fail(str(error), BAD_INPUT)
    records = _with_store(lambda store: store.api_keys(user))
    if as_json:
        print(json.dumps({"keys": [_key_json(r) for r in records]}, ensure_ascii=False))
        return
    if not records:
        out.print(f"no API keys{f' for {escape(user)}' if user else ''}")
        return
    table = Table("key id", "user", "label", "created", "revoked")
    for record in records:
        table.add_row(
            record.key_id,
            escape(record.user),
            escape(record.label),
            record.created_at,
            record.revoked_at or "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`agent keys list`).")],
) -> None:
    """Revoke a key: the gateway refuses it from the next request on."""
    _check_text("key id", key_id)
    try:
        check_key_id(key_id)
    except InvalidKeyInput as error:
        _fail(str(error), BAD_INPUT)

    async def revoke(store: ConversationStore) -> tuple[bool, ApiKeyRecord | None]:
        return await store.revoke_api_key(key_id, now_iso()), await store.api_key(key_id)

    revoked, record = _with_store(revoke)
    if record is None:
        _fail(f"no API key {key_id}", 1)
    if not revoked:
        _fail(f"key {key_id} was already revoked at {record.revoked_at}", 1)
    out.print(f"revoked key {key_id} of {escape(record.user)}", soft_wrap=True)


# ---- plumbing --------------------------------------------------------------------------------
def _key_json(record: ApiKeyRecord) -> dict[str, object]:
    return record.model_dump(exclude={"secret_sha256"})


def _check_text(what: str, text: str) -> None:
    problem = utf8_problem(text)
    if problem:
        _fail(f"the {what} is not valid UTF-8: {problem}", BAD_INPUT)


def _with_store(work: Callable[[ConversationStore], Awaitable[T]], *, create: bool = False) -> T:
    """Run `work` on the store named by ORCHESTRATOR_STORE_URL; any failure is one line."""
    try:
        settings = load_settings(OrchestratorSettings)
    except ConfigError as error:
        _fail(str(error), BAD_INPUT)
    url = settings.store_url
    if url.startswith("sqlite:///") and not create:
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            # Reading never creates an empty store (a relative path read from elsewhere).
            _fail(f"there is no conversation store at {path} (ORCHESTRATOR_STORE_URL)", 1)
    password = settings.store_password.get_secret_value() if settings.store_password else None

    async def run() -> T:
        store = open_store(url, password)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except Exception as error:  # the store cannot be used: one line, never a traceback
        lines = str(error).strip().splitlines()
        _fail(
            f"cannot use the conversation store: {lines[0] if lines else type(error).__name__}", 1
        )


def _note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]", soft_wrap=True, highlight=False)


def _fail(message: str, code: int) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)

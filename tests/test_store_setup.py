"""The compose setup job's store step: the orchestrator's own PostgreSQL database and user, its
password generated once into the orchestrator's secrets directory, idempotently."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from infrastructure.postgres import (
    PostgresServer,
    PostgresUnavailable,
    binaries,
    postgres_server,
)
from infrastructure.setup import STORE_PASSWORD_FILE, StoreSetupSettings, ensure_store_database
from orchestrator.config import OrchestratorSettings
from orchestrator.models import ChatMessage, StoredMessage
from orchestrator.store import open_store
from shared.config import ConfigError, load_settings, secret_file_name

ADMIN_PASSWORD = "admin-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    try:
        with postgres_server(superuser="temporal", password=ADMIN_PASSWORD) as running:
            yield running
    except PostgresUnavailable as err:
        pytest.skip(str(err))


def settings(server: PostgresServer, secrets: Path) -> StoreSetupSettings:
    return StoreSetupSettings(
        admin_url=f"postgresql://temporal@{server.host}:{server.port}/postgres",
        admin_password=SecretStr(ADMIN_PASSWORD),
        database="orchestrator",
        user="orchestrator",
        password_dir=secrets,
    )


def store_url(server: PostgresServer) -> str:
    return f"postgresql://orchestrator@{server.host}:{server.port}/orchestrator"


async def test_nothing_to_do_without_an_admin_url(tmp_path: Path) -> None:
    assert await ensure_store_database(StoreSetupSettings(password_dir=tmp_path)) is None
    assert list(tmp_path.iterdir()) == []


async def test_an_admin_url_needs_a_password_dir() -> None:
    with pytest.raises(ConfigError, match="STORE_SETUP_PASSWORD_DIR"):
        await ensure_store_database(StoreSetupSettings(admin_url="postgresql://x@y/postgres"))


async def test_store_database_is_made_once_and_its_password_works(
    server: PostgresServer, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    assert await ensure_store_database(settings(server, secrets)) == (
        "user created, database created"
    )
    password_file = secrets / STORE_PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text()
    assert len(password) >= 32
    # Run again, as every `docker compose up` does: nothing changes, the password is kept.
    assert await ensure_store_database(settings(server, secrets)) == "unchanged"
    assert password_file.read_text() == password

    # The orchestrator's store works with that password, given beside the URL...
    store = open_store(store_url(server), password)
    message = StoredMessage(seq=0, message=ChatMessage(role="user", content="hello"))
    await store.append("c1", [message])
    assert [m.message.content for m in await store.messages("c1")] == ["hello"]
    # ...and not without it.
    with pytest.raises(psycopg.OperationalError):
        await open_store(store_url(server)).messages("c1")

    # Rotation: delete the file and run setup again; the old password stops working.
    password_file.unlink()
    assert await ensure_store_database(settings(server, secrets)) == "unchanged"
    rotated = password_file.read_text()
    assert rotated != password
    with pytest.raises(psycopg.OperationalError):
        await open_store(store_url(server), password).messages("c1")
    assert len(await open_store(store_url(server), rotated).messages("c1")) == 1


def test_orchestrator_reads_the_store_password_from_its_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secret_file_name(OrchestratorSettings, "store_password") == STORE_PASSWORD_FILE
    (tmp_path / STORE_PASSWORD_FILE).write_text("from-the-volume")
    monkeypatch.delenv("ORCHESTRATOR_STORE_PASSWORD", raising=False)
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    loaded = load_settings(OrchestratorSettings)
    assert loaded.store_password is not None
    assert loaded.store_password.get_secret_value() == "from-the-volume"
    assert "from-the-volume" not in repr(loaded)


async def test_documented_dump_and_restore_of_the_store_database(
    server: PostgresServer, tmp_path: Path
) -> None:
    """The README's compose backup: `pg_dump -U <superuser> -d orchestrator -Fc` over the local
    socket, and `pg_restore --clean --if-exists --no-owner --role=orchestrator` back into it."""
    secrets = tmp_path / "secrets"
    await ensure_store_database(settings(server, secrets))
    password = (secrets / STORE_PASSWORD_FILE).read_text()
    store = open_store(store_url(server), password)
    before = StoredMessage(seq=0, message=ChatMessage(role="user", content="kept"))
    await store.append("backup-1", [before])
    socket = ["-h", str(server.workdir), "-p", str(server.port), "-U", server.superuser]
    dump = tmp_path / "orchestrator.dump"
    with dump.open("wb") as out:
        subprocess.run(
            [str(binaries() / "pg_dump"), *socket, "-d", "orchestrator", "-Fc"],
            stdout=out,
            check=True,
            timeout=60,
        )
    after = StoredMessage(seq=1, message=ChatMessage(role="user", content="after the dump"))
    await store.append("backup-1", [after])
    with dump.open("rb") as source:
        subprocess.run(
            [
                str(binaries() / "pg_restore"),
                *socket,
                "-d",
                "orchestrator",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--role=orchestrator",
            ],
            stdin=source,
            check=True,
            timeout=60,
        )
    assert [m.message.content for m in await store.messages("backup-1")] == ["kept"]
    # Restored tables belong to the store's user again, so the orchestrator can keep writing.
    await store.append("backup-1", [after])
    assert len(await store.messages("backup-1")) == 2

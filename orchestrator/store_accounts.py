"""Who may use the gateway, and whose conversation is whose, kept in the conversation store.

API keys are kept hashed: a key is `agk_<key id>_<secret>`, and only the SHA-256 of its secret is
stored (the secret is 32 random bytes, so a fast hash is enough; nothing to brute-force).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from pydantic import BaseModel

ACCOUNTS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        label TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user_name)",
    """CREATE TABLE IF NOT EXISTS conversation_owners (
        conversation_id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS conversation_owners_user "
    "ON conversation_owners (user_name, created_at)",
]


class ApiKeyRecord(BaseModel):
    key_id: str
    user: str
    secret_sha256: str
    label: str = ""
    created_at: str
    revoked_at: str | None = None


class OwnedConversation(BaseModel):
    conversation_id: str
    user: str
    title: str = ""
    created_at: str


class Accounts:
    """API keys and conversation owners, mixed into ConversationStore (which supplies `_sql`)."""

    @abstractmethod
    async def _sql(
        self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...] = ()
    ) -> list[Any]: ...

    async def put_api_key(self, record: ApiKeyRecord) -> None:
        await self._sql(
            "INSERT INTO api_keys (key_id, user_name, secret_sha256, label, created_at, "
            "revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    record.key_id,
                    record.user,
                    record.secret_sha256,
                    record.label,
                    record.created_at,
                    record.revoked_at,
                )
            ],
        )

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._sql(
            "SELECT key_id, user_name, secret_sha256, label, created_at, revoked_at "
            "FROM api_keys WHERE key_id = ?",
            (key_id,),
        )
        return _key(rows[0]) if rows else None

    async def api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        where, params = ("WHERE user_name = ? ", (user,)) if user is not None else ("", ())
        rows = await self._sql(
            "SELECT key_id, user_name, secret_sha256, label, created_at, revoked_at "
            f"FROM api_keys {where}ORDER BY created_at, key_id",
            params,
        )
        return [_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        """Revoke a key; False when no such key is live."""
        live = await self._sql(
            "SELECT key_id FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
        )
        if not live:
            return False
        await self._sql("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (at, key_id))
        return True

    async def claim_conversation(self, owned: OwnedConversation) -> str:
        """Record who a conversation belongs to; the first owner recorded stands. Returns it."""
        await self._sql(
            "INSERT INTO conversation_owners (conversation_id, user_name, title, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(owned.conversation_id, owned.user, owned.title, owned.created_at)],
        )
        owner = await self.conversation_owner(owned.conversation_id)
        return owner if owner is not None else owned.user

    async def conversation_owner(self, conversation_id: str) -> str | None:
        rows = await self._sql(
            "SELECT user_name FROM conversation_owners WHERE conversation_id = ?",
            (conversation_id,),
        )
        return str(rows[0][0]) if rows else None

    async def owned_conversation(self, conversation_id: str) -> OwnedConversation | None:
        """Who owns a conversation, and its title and creation time; None when nobody does."""
        rows = await self._sql(
            "SELECT conversation_id, user_name, title, created_at FROM conversation_owners "
            "WHERE conversation_id = ?",
            (conversation_id,),
        )
        return (
            OwnedConversation(
                conversation_id=rows[0][0], user=rows[0][1], title=rows[0][2], created_at=rows[0][3]
            )
            if rows
            else None
        )

    async def owned_among(self, user: str, conversation_ids: list[str]) -> list[str]:
        """Those of `conversation_ids` that `user` owns, in the order given."""
        owned: set[str] = set()
        for start in range(0, len(conversation_ids), 500):  # bounded statements
            chunk = conversation_ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._sql(
                "SELECT conversation_id FROM conversation_owners "
                f"WHERE user_name = ? AND conversation_id IN ({marks})",
                (user, *chunk),
            )
            owned.update(str(row[0]) for row in rows)
        return [conversation_id for conversation_id in conversation_ids if conversation_id in owned]

    async def owned_conversations(self, user: str, limit: int = 50) -> list[OwnedConversation]:
        """A user's conversations, newest first."""
        rows = await self._sql(
            "SELECT conversation_id, user_name, title, created_at FROM conversation_owners "
            "WHERE user_name = ? ORDER BY created_at DESC, conversation_id LIMIT ?",
            (user, limit),
        )
        return [
            OwnedConversation(conversation_id=r[0], user=r[1], title=r[2], created_at=r[3])
            for r in rows
        ]


def _key(row: Any) -> ApiKeyRecord:
    key_id, user, digest, label, created_at, revoked_at = row
    return ApiKeyRecord(
        key_id=key_id,
        user=user,
        secret_sha256=digest,
        label=label,
        created_at=created_at,
        revoked_at=revoked_at,
    )

"""API keys: made, hashed and checked here; kept in the conversation store (store_accounts).

A key reads `agk_<key id>_<secret>`: the key id is 12 hex characters (it names the key in
`agent keys list` and `agent keys revoke`), the secret 32 random bytes in URL-safe base64. Only the
SHA-256 of the secret is stored, and it is compared in constant time. The whole key is shown once,
when it is made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.store_accounts import Accounts, ApiKeyRecord

KEY_PREFIX = "agk_"
KEY_ID_HEX = 12
SECRET_BYTES = 32
MAX_LABEL_CHARS = 200
MAX_USER_CHARS = 200
# Who a key is for: what the gateway calls the user, approvers' names in approval policies, and
# the user a conversation's budgets are counted against.
USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")
_KEY = re.compile(r"^agk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")


class InvalidKeyInput(ValueError):
    """A user name, label or key id that cannot be used; the message says why."""


@dataclass(frozen=True)
class NewKey:
    """A key just made: `key` is shown once and never stored."""

    key: str
    record: ApiKeyRecord


def check_user_name(user: str) -> str:
    if not USER_PATTERN.match(user):
        raise InvalidKeyInput(
            f"invalid user name {user[:40]!r}: use 1 to {MAX_USER_CHARS} letters, digits and "
            "._@+- (starting with a letter or digit)"
        )
    return user


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise InvalidKeyInput(
            f"invalid key id {key_id[:40]!r}: a key id is {KEY_ID_HEX} lower-case hex characters "
            "(see `agent keys list`)"
        )
    return key_id


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def now_iso(timespec: str = "seconds") -> str:
    return datetime.now(UTC).isoformat(timespec=timespec)


def check_label(label: str) -> str:
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidKeyInput(
            f"the label is {len(label)} characters; the limit is {MAX_LABEL_CHARS}"
        )
    if any(not character.isprintable() for character in label):
        raise InvalidKeyInput("the label holds control characters")
    return label


def make_key(user: str, label: str = "") -> NewKey:
    """A fresh key for `user` (not stored yet)."""
    check_user_name(user)
    check_label(label)
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    record = ApiKeyRecord(
        key_id=key_id,
        user=user,
        secret_sha256=secret_digest(secret),
        label=label,
        created_at=now_iso(),
    )
    return NewKey(key=f"{KEY_PREFIX}{key_id}_{secret}", record=record)


async def create_key(store: Accounts, user: str, label: str = "") -> NewKey:
    """Make a key for `user` and keep its hash in the store."""
    new = make_key(user, label)
    await store.put_api_key(new.record)
    return new


def parse_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


async def verify_key(store: Accounts, key: str) -> ApiKeyRecord | None:
    """The live key record `key` proves, or None (malformed, unknown, wrong secret, revoked)."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    record = await store.api_key(key_id)
    # Compared even for an unknown key id, so timing tells nothing about which ids exist.
    expected = record.secret_sha256 if record is not None else "0" * 64
    matches = hmac.compare_digest(secret_digest(secret), expected)
    if record is None or not matches or record.revoked_at is not None:
        return None
    return record

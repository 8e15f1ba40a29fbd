"""Secrets as files: `load_settings` reads the directory named by SECRETS_DIR (pydantic-settings'
secrets directory), the way Kubernetes/Docker secrets and Vault agent deliver them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from orchestrator.config import LLMSettings
from shared.auth import NexusAuthSettings
from shared.config import ConfigError, load_settings, secret_file_name

SECRET = base64.b64encode(b"s" * 32).decode()
SIGNING = {"it-tools": f"k1:{SECRET}", "finance-tools": f"k2:{SECRET}"}
VERIFY = {"k1": SECRET, "old": base64.b64encode(b"o" * 32).decode()}
SECRET_VARIABLES = (
    "NEXUS_AUTH_SIGNING_KEYS",
    "NEXUS_AUTH_VERIFY_KEYS",
    "LLM_API_KEY",
    "SECRETS_DIR",
)


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty secrets directory named by SECRETS_DIR, with none of the secrets in the env."""
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    directory = tmp_path / "secrets"
    directory.mkdir()
    monkeypatch.setenv("SECRETS_DIR", str(directory))
    return directory


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def test_secret_file_names_are_the_lower_case_variable_names() -> None:
    assert secret_file_name(NexusAuthSettings, "signing_keys") == "nexus_auth_signing_keys"
    assert secret_file_name(NexusAuthSettings, "verify_keys") == "nexus_auth_verify_keys"
    assert secret_file_name(LLMSettings, "api_key") == "llm_api_key"
    with pytest.raises(ValueError, match="no setting"):
        secret_file_name(LLMSettings, "no_such_field")


def test_nexus_keys_from_files_parse_like_the_environment(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trailing newlines, as `echo ... > file` and most secret stores write them.
    _write(secrets_dir, "nexus_auth_signing_keys", json.dumps(SIGNING) + "\n")
    _write(secrets_dir, "nexus_auth_verify_keys", json.dumps(VERIFY, indent=2) + "\n")
    from_files = load_settings(NexusAuthSettings)

    monkeypatch.delenv("SECRETS_DIR")
    monkeypatch.setenv("NEXUS_AUTH_SIGNING_KEYS", json.dumps(SIGNING))
    monkeypatch.setenv("NEXUS_AUTH_VERIFY_KEYS", json.dumps(VERIFY))
    from_env = load_settings(NexusAuthSettings)

    assert from_files.signing_keys == from_env.signing_keys == SIGNING
    assert from_files.verify_keys == from_env.verify_keys == VERIFY
    assert from_files.signing() == from_env.signing()
    assert from_files.verifying() == from_env.verifying()


def test_llm_api_key_from_a_file(secrets_dir: Path) -> None:
    _write(secrets_dir, "llm_api_key", "sk-from-file\n")
    llm = load_settings(LLMSettings)
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "sk-from-file"


def test_an_environment_variable_wins_over_the_file(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(secrets_dir, "llm_api_key", "sk-from-file")
    monkeypatch.setenv("LLM_API_KEY", "sk-from-env")
    llm = load_settings(LLMSettings)
    assert llm.api_key is not None and llm.api_key.get_secret_value() == "sk-from-env"


def test_without_secrets_dir_nothing_is_read_from_files(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert load_settings(NexusAuthSettings).verify_keys == {}


def _one_line_config_error(settings_type: type[NexusAuthSettings] | type[LLMSettings]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_type)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_secret_file_that_is_not_json_is_one_line(secrets_dir: Path) -> None:
    path = _write(secrets_dir, "nexus_auth_verify_keys", "{not json")
    message = _one_line_config_error(NexusAuthSettings)
    assert message == f"invalid configuration: secret file {path}: expected a JSON value"


def test_a_secret_file_with_a_bad_key_names_the_setting(secrets_dir: Path) -> None:
    _write(secrets_dir, "nexus_auth_verify_keys", json.dumps({"k1": "too-short"}))
    message = _one_line_config_error(NexusAuthSettings)
    assert "NEXUS_AUTH_VERIFY_KEYS" in message and "verify key 'k1'" in message
    assert "too-short" not in message  # the error never echoes a secret's value


def test_a_secret_file_that_is_not_text_is_one_line(secrets_dir: Path) -> None:
    path = _write(secrets_dir, "llm_api_key", b"\xff\xfe\x00binary")
    message = _one_line_config_error(LLMSettings)
    assert message == f"invalid configuration: secret file {path}: not UTF-8 text"


def test_a_missing_secrets_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "not-mounted"))
    message = _one_line_config_error(NexusAuthSettings)
    assert (
        message
        == f"invalid configuration: SECRETS_DIR: {tmp_path / 'not-mounted'} is not a directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_secret_file_is_one_line(secrets_dir: Path) -> None:
    path = _write(secrets_dir, "nexus_auth_verify_keys", json.dumps(VERIFY))
    path.chmod(0o000)
    message = _one_line_config_error(NexusAuthSettings)
    assert message == f"invalid configuration: secret file {path}: unreadable (Permission denied)"

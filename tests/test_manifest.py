"""A team is one folder: its manifest, the one worker entry point, and the scaffold's refusals."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.scaffold import TEMPLATE_DIR, ScaffoldError, TeamNames, check_name, scaffold
from infrastructure.stack_processes import ORCHESTRATOR_WORKER, TEAM_ENV_PREFIXES, stack_workers
from shared.config import temporal_settings_for
from shared.manifest import (
    ManifestError,
    discover_teams,
    discovered_endpoints,
    find_team,
    load_manifest,
)
from shared.tools import ToolRegistry
from shared.worker import load_team_code

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
service = "acme"
namespace = "acme"
task_queue = "acme-tools"
endpoint = "acme-tools"
registry = "acme_service.tools:registry"
"""


def write_team(root: Path, package: str, text: str) -> Path:
    folder = root / package
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "team.toml"
    path.write_text(text)
    return path


# --- the manifest -------------------------------------------------------------------------------


def test_the_repository_teams_are_discovered_from_their_manifests() -> None:
    teams = {team.service: team for team in discover_teams()}
    assert {"it", "finance"} <= set(teams)
    it = teams["it"]
    assert (it.package, it.namespace, it.task_queue, it.endpoint) == (
        "it_service",
        "it",
        "it-tools",
        "it-tools",
    )
    assert it.workflows == ["it_service.workflows:ITSessionWorkflow"]
    assert "JIRA_" in it.env_prefixes
    assert discovered_endpoints() == [team.endpoint for team in discover_teams()]


def test_a_minimal_manifest_defaults_the_rest(tmp_path: Path) -> None:
    team = load_manifest(write_team(tmp_path, "acme_service", MINIMAL))
    assert team.package == "acme_service"
    assert team.workflows == team.activities == team.env_prefixes == team.examples == []
    assert team.sample_calls == [] and team.effect_audit is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('namespace = "acme_ns"', "namespace"),
        ('endpoint = "acme_tools"', "endpoint"),
        ('registry = "other_service.tools:registry"', "outside the team's package"),
        ('registry = "acme_service.tools"', "registry"),
        ('env_prefixes = ["acme_"]', "env_prefixes"),
        ('env_prefixes = ["ACME"]', "env_prefixes"),
        ('colour = "blue"', "colour"),
        ('package = "acme_service"', "'package' is the folder's name"),
        ("service = ", "not TOML"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_file(
    tmp_path: Path, change: str, message: str
) -> None:
    key = change.split(" ", 1)[0]
    lines = [line for line in MINIMAL.strip().splitlines() if not line.startswith(f"{key} ")]
    path = write_team(tmp_path, "acme_service", "\n".join([*lines, change]) + "\n")
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    text = str(raised.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_a_folder_that_is_no_python_package_is_refused(tmp_path: Path) -> None:
    path = write_team(tmp_path, "acme-service", MINIMAL)
    with pytest.raises(ManifestError, match="not an importable"):
        load_manifest(path)


def test_two_teams_cannot_claim_one_endpoint(tmp_path: Path) -> None:
    write_team(tmp_path, "acme_service", MINIMAL)
    other = MINIMAL.replace('service = "acme"', 'service = "other"')
    other = other.replace('namespace = "acme"', 'namespace = "other"')
    write_team(tmp_path, "other_service", other.replace("acme_service", "other_service"))
    with pytest.raises(ManifestError, match="endpoint 'acme-tools' is already declared"):
        discover_teams(tmp_path)


def test_hidden_folders_and_templates_are_not_teams(tmp_path: Path) -> None:
    write_team(tmp_path, ".venv", MINIMAL)
    (tmp_path / "template").mkdir()
    (tmp_path / "template" / "team.toml.tmpl").write_text(MINIMAL)
    assert discover_teams(tmp_path) == []
    assert not list((ROOT / TEMPLATE_DIR).glob("team.toml")), "the template must not be a team"


def test_find_team_locates_a_package_without_importing_it() -> None:
    team = find_team("finance_service")
    assert team.service == "finance"
    with pytest.raises(ManifestError, match="no team package 'no_such_team'"):
        find_team("no_such_team")
    with pytest.raises(ManifestError, match=re.escape("has no team.toml")):
        find_team("shared")


# --- the one worker entry point ---------------------------------------------------------------


def test_team_settings_default_to_the_manifest_and_yield_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    team = find_team("it_service")
    settings_type = temporal_settings_for(team.namespace, team.task_queue)
    monkeypatch.delenv("TEMPORAL_NAMESPACE", raising=False)
    monkeypatch.delenv("TEMPORAL_TASK_QUEUE", raising=False)
    assert (settings_type().namespace, settings_type().task_queue) == ("it", "it-tools")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "it.acct1")
    assert settings_type().namespace == "it.acct1"


def test_the_worker_loads_exactly_what_the_manifest_names() -> None:
    code = load_team_code(find_team("it_service"))
    assert isinstance(code.registry, ToolRegistry) and code.registry.service == "it"
    assert [w.__name__ for w in code.workflows] == ["ITSessionWorkflow"]


def test_a_registry_of_another_service_is_refused(tmp_path: Path) -> None:
    team = load_manifest(
        write_team(tmp_path, "finance_service", MINIMAL.replace("acme_service", "finance_service"))
    )
    with pytest.raises(
        ManifestError, match=re.escape("registry's service is 'finance' but team.toml says")
    ):
        load_team_code(team)


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], "usage: python -m shared.worker <team_package>"), (["no_such_team"], "no team package")],
)
def test_the_worker_entry_point_refuses_with_one_line(args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_devstack_runs_one_worker_per_manifest_then_the_orchestrator() -> None:
    teams = discover_teams()
    workers = stack_workers(teams)
    assert workers[-1] == ORCHESTRATOR_WORKER
    for team, worker in zip(teams, workers, strict=False):
        assert worker.name == team.service
        assert worker.command == ("-m", "shared.worker", team.package)
        assert (worker.namespace, worker.task_queue, worker.endpoint) == (
            team.namespace,
            team.task_queue,
            team.endpoint,
        )
        assert set(TEAM_ENV_PREFIXES) | set(team.env_prefixes) <= set(worker.env_prefixes)


# --- nothing outside a team folder names a team -------------------------------------------------

# What `make up`, setup, the benches, the chaos run, the scaffold and the SDK's worker path read.
PLATFORM_FILES = [
    "infrastructure/setup.py",
    "infrastructure/devstack.py",
    "infrastructure/chaos.py",
    "infrastructure/scaffold.py",
    "infrastructure/terraform_teams.py",
    "infrastructure/probe.py",
    "shared/config.py",
    "shared/manifest.py",
    "shared/worker.py",
    "Makefile",
    "deploy/setup.Dockerfile",
    "deploy/setup.Dockerfile.dockerignore",
    *(str(path.relative_to(ROOT)) for path in sorted((ROOT / "bench").glob("*.py"))),
]
TEAM_NAMES = re.compile(
    r"it_service|finance_service|it-tools|finance-tools|\"it\"|\"finance\"|\bIT\b|[Ff]inance|Jira|JIRA|QUOTE"
)


@pytest.mark.parametrize("relative", PLATFORM_FILES)
def test_the_platform_names_no_team(relative: str) -> None:
    text = (ROOT / relative).read_text()
    found = sorted({match.group(0) for match in TEAM_NAMES.finditer(text)})
    assert not found, f"{relative} names a team: {found}"


def test_the_orchestrator_default_endpoints_are_not_hard_coded() -> None:
    text = (ROOT / "orchestrator" / "config.py").read_text()
    assert "default_factory=discovered_endpoints" in text
    assert not TEAM_NAMES.search(text)


# --- the scaffold -------------------------------------------------------------------------------


def test_names_are_derived_from_one_word() -> None:
    names = TeamNames("hr")
    assert names.fields() == {
        "service": "hr",
        "package": "hr_service",
        "namespace": "hr",
        "task_queue": "hr-tools",
        "endpoint": "hr-tools",
        "env_prefix": "HR_",
        "tool": "hr_greet",
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "usage: make new-service NAME=<name>"),
        ("Hr", "is not a team name"),
        ("h", "is not a team name"),
        ("hr-ops", "is not a team name"),
        ("hr_ops", "is not a team name"),
        ("9hr", "is not a team name"),
        ("x" * 21, "is not a team name"),
        ("orchestrator", "reserved"),
        ("local", "reserved"),
        ("it", "it_service/ already exists"),
    ],
)
def test_bad_names_are_refused_with_one_line(name: str, message: str) -> None:
    with pytest.raises(ScaffoldError) as raised:
        check_name(name, ROOT)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_name_another_team_already_uses_is_refused(tmp_path: Path) -> None:
    write_team(
        tmp_path, "ops_service", MINIMAL.replace("acme", "hr").replace("hr_service", "ops_service")
    )
    with pytest.raises(
        ScaffoldError, match=re.escape("'hr' is already used by ops_service/team.toml")
    ):
        check_name("hr", tmp_path)


def test_the_scaffold_command_refuses_on_stderr_and_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infrastructure.scaffold", "Bad!"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: 'Bad!' is not a team name")
    assert not (ROOT / "Bad!_service").exists()


def test_scaffold_writes_a_team_the_discovery_accepts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / TEMPLATE_DIR, tmp_path / TEMPLATE_DIR)
    scaffold("hr", tmp_path)
    (team,) = discover_teams(tmp_path)
    assert (team.service, team.package, team.namespace, team.task_queue, team.endpoint) == (
        "hr",
        "hr_service",
        "hr",
        "hr-tools",
        "hr-tools",
    )
    assert team.env_prefixes == ["HR_"]
    assert [call.tool for call in team.sample_calls] == ["hr_greet"]
    assert (tmp_path / "tests" / "test_hr_service.py").is_file()
    worker = (tmp_path / "hr_service" / "worker.py").read_text()
    assert "serve_package" in worker
    with pytest.raises(ScaffoldError, match="hr_service/ already exists"):
        scaffold("hr", tmp_path)


def test_make_new_service_runs_the_scaffold() -> None:
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "new-service", "NAME=hr"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert 'python -m infrastructure.scaffold "hr"' in result.stdout

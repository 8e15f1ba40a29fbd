"""Which processes the embedded stack runs, and what each of them may see.

`make up` (infrastructure.devstack) starts one worker per team manifest, the orchestrator and the
HTTP gateway; each gets a fresh environment holding only the base names every process needs and the prefixes it
reads itself, so no process sees another's settings or secrets. The compose rehearsal builds its
processes' environments the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from temporalio.api.enums.v1 import TaskQueueType

from shared.config import SECRETS_DIR_VARIABLE, ConfigError, OrchestratorTemporalSettings
from shared.manifest import TeamManifest

# ---- what each child process may see ---------------------------------------------------------
# Every child starts from an empty environment plus these names from `make up`'s environment: what
# a Python interpreter or the Temporal CLI needs to run, find its packages and log. None of them is
# anybody's secret. The TEMPORAL_* values a worker needs are set by devstack itself, never copied.
BASE_ENV_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "LOG_LEVEL", "LOG_FORMAT"}
)
# The locale categories (LC_ALL, LC_CTYPE, ...), and where spans go and how many: the OTLP
# collector's address and the sampler (not secrets; OTEL_EXPORTER_OTLP_HEADERS, which usually
# holds a token, is not passed), and what spans hold. OTEL_SERVICE_NAME is set per process.
BASE_ENV_PREFIXES = (
    "LC_",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_BSP_",
    "OTEL_SDK_DISABLED",
    "TELEMETRY_CAPTURE_CONTENT",
    "TELEMETRY_TEMPORAL_SPANS",
)

# Never copied from `make up`'s environment, whatever a process's prefixes say: devstack sets the
# values each child needs (its Temporal target, its auth settings, its secrets directory), and the
# parent's own (a Temporal Cloud API key, a production key set) belong to no child of the dev stack.
DEVSTACK_OWNED_PREFIXES = (
    "TEMPORAL_",
    "NEXUS_AUTH_",
    SECRETS_DIR_VARIABLE,
    "METRICS_BIND_ADDRESS",
    "TELEMETRY_TRACES_FILE",
    "OTEL_SERVICE_NAME",
)

# Read by every team's worker: ToolServiceSettings (TOOL_*, including the effect ledger's
# TOOL_LEDGER_PATH). Each team adds its own prefixes in its manifest (`env_prefixes`).
TEAM_ENV_PREFIXES = ("TOOL_",)

# Outbound HTTP plumbing for the processes that call external APIs (LLM providers, team APIs):
# proxies and CA bundles, honoured by httpx and LiteLLM. Configuration, not credentials.
OUTBOUND_HTTP_ENV_PREFIXES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)

# The credentials and endpoints LiteLLM reads from os.environ by itself, per provider (they never
# pass through our settings): OPENAI_API_KEY, AZURE_API_BASE, AWS_ACCESS_KEY_ID for Bedrock,
# GOOGLE_APPLICATION_CREDENTIALS for Vertex AI, HF_TOKEN, ... Only the orchestrator calls a model,
# so only it gets these. Adding a provider is one line here.
LLM_PROVIDER_ENV_PREFIXES = (
    "OPENAI_",
    "ANTHROPIC_",
    "AZURE_",  # AZURE_API_KEY, AZURE_API_BASE, AZURE_API_VERSION, AZURE_AD_TOKEN, AZURE_AI_*
    "GEMINI_",
    "GOOGLE_",  # GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_API_KEY
    "VERTEXAI_",
    "VERTEX_",
    "AWS_",  # Bedrock and SageMaker
    "MISTRAL_",
    "CODESTRAL_",
    "GROQ_",
    "COHERE_",
    "CO_API_KEY",
    "OPENROUTER_",
    "OR_SITE_URL",
    "OR_APP_NAME",
    "DEEPSEEK_",
    "XAI_",
    "TOGETHERAI_",
    "TOGETHER_",
    "OLLAMA_",
    "HUGGINGFACE_",
    "HF_",
    "REPLICATE_",
    "PERPLEXITYAI_",
    "PERPLEXITY_",
    "FIREWORKS_",
    "FIREWORKSAI_",
    "CEREBRAS_",
    "NVIDIA_NIM_",
    "DATABRICKS_",
    "WATSONX_",
    "SAMBANOVA_",
    "AI21_",
    "VOYAGE_",
    "DASHSCOPE_",
    "MOONSHOT_",
    "NEBIUS_",
    "HOSTED_VLLM_",
    "LM_STUDIO_",
)

ORCHESTRATOR_ENV_PREFIXES = (
    "ORCHESTRATOR_",  # OrchestratorSettings
    "LLM_",  # LLMSettings (LLM_MODEL, LLM_API_BASE, LLM_API_KEY, ...)
    "LITELLM_",  # LiteLLM's own switches, e.g. LITELLM_LOCAL_MODEL_COST_MAP
    *LLM_PROVIDER_ENV_PREFIXES,
    *OUTBOUND_HTTP_ENV_PREFIXES,
)


def child_environment(
    parent: Mapping[str, str], prefixes: Sequence[str], own: Mapping[str, str]
) -> dict[str, str]:
    """A child's whole environment: the base names, the parent's variables that start with one of
    `prefixes` (case-insensitively, as pydantic-settings reads them), and `own` on top."""
    allowed = tuple(prefix.upper() for prefix in prefixes)
    env = {}
    for name, value in parent.items():
        upper = name.upper()
        if upper.startswith(DEVSTACK_OWNED_PREFIXES):
            continue
        if upper in BASE_ENV_NAMES or upper.startswith(BASE_ENV_PREFIXES + allowed):
            env[name] = value
    env.update(own)
    return env


@dataclass(frozen=True)
class WorkerProcess:
    name: str
    # What follows the interpreter on the command line, e.g. ("-m", "orchestrator.worker").
    command: tuple[str, ...]
    namespace: str
    task_queue: str
    # Which task-queue type proves the worker is serving: Nexus for team services.
    poll_type: int
    endpoint: str | None = None  # a team's Nexus endpoint: its callers must sign for it
    # The environment variables this process reads, by prefix: it gets these and the base list,
    # nothing of anybody else's (see child_environment).
    env_prefixes: tuple[str, ...] = ()


# The orchestrator is the platform, not a team: it is always there, with its own settings.
ORCHESTRATOR_WORKER = WorkerProcess(
    "orchestrator",
    ("-m", "orchestrator.worker"),
    OrchestratorTemporalSettings.model_fields["namespace"].default,
    OrchestratorTemporalSettings.model_fields["task_queue"].default,
    TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    env_prefixes=ORCHESTRATOR_ENV_PREFIXES,
)

# The HTTP/SSE gateway (orchestrator.gateway): not a worker, it polls no task queue. It reads its
# own settings, and the orchestrator's store URL (and password) only: never the model's keys.
GATEWAY_PROCESS = "gateway"
GATEWAY_COMMAND = ("-m", "orchestrator.gateway")
GATEWAY_ENV_PREFIXES = ("GATEWAY_", "ORCHESTRATOR_STORE_")

# Process names the stack itself uses; a team named like one would share its records and logs.
RESERVED_PROCESS_NAMES = frozenset({"temporal", ORCHESTRATOR_WORKER.name, GATEWAY_PROCESS})


def team_worker(team: TeamManifest) -> WorkerProcess:
    """A team's worker as its manifest declares it, started through the one team entry point."""
    if team.service in RESERVED_PROCESS_NAMES:
        raise ConfigError(
            f"team {team.package}: the service name '{team.service}' is taken by the stack itself"
        )
    return WorkerProcess(
        team.service,
        ("-m", "shared.worker", team.package),
        team.namespace,
        team.task_queue,
        TaskQueueType.TASK_QUEUE_TYPE_NEXUS,
        endpoint=team.endpoint,
        env_prefixes=(*TEAM_ENV_PREFIXES, *OUTBOUND_HTTP_ENV_PREFIXES, *team.env_prefixes),
    )


def stack_workers(teams: Sequence[TeamManifest]) -> list[WorkerProcess]:
    """Every worker `make up` runs: one per team manifest, then the orchestrator (last, so the
    teams it discovers on start are already polling when it asks them)."""
    return [*(team_worker(team) for team in teams), ORCHESTRATOR_WORKER]

"""`python -m orchestrator.worker`: the conversation workflows and their activities."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.activities import OrchestratorActivities
from orchestrator.config import LLMSettings, OrchestratorSettings
from orchestrator.read_workflow import ReadConversation
from orchestrator.store import ConversationStore
from orchestrator.workflows import ConversationWorkflow
from shared.auth import CallerTokenInterceptor, NexusAuthSettings
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.heartbeat import HEARTBEAT_THROTTLE
from shared.log import configure_logging, get_logger
from shared.temporal import exit_process
from shared.worker import serve_worker

log = get_logger(__name__)


def build_orchestrator_worker(
    client: Client,
    *,
    task_queue: str,
    settings: OrchestratorSettings,
    llm_settings: LLMSettings,
    auth: NexusAuthSettings | None = None,
    store: ConversationStore | None = None,
) -> Worker:
    activities = OrchestratorActivities(client, settings, llm_settings, store)
    interceptors = []
    if auth is not None and auth.signing_keys:
        interceptors.append(CallerTokenInterceptor(auth.signing(), auth.caller))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ConversationWorkflow, ReadConversation],
        activities=[
            activities.load_agent_config,
            activities.llm_step,
            activities.run_local_tool,
            activities.record_turn,
            activities.record_approval,
            activities.read_turns,
        ],
        interceptors=interceptors,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        workflow_runner=(
            SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
        ),
    )


def main() -> int:
    configure_logging()
    try:
        temporal = load_settings(OrchestratorTemporalSettings)
        settings = load_settings(OrchestratorSettings)
        llm_settings = load_settings(LLMSettings)
        auth = load_settings(NexusAuthSettings)
    except ConfigError as err:
        log.error(str(err))
        return 2

    def build(client: Client) -> Worker:
        return build_orchestrator_worker(
            client,
            task_queue=temporal.task_queue,
            settings=settings,
            llm_settings=llm_settings,
            auth=auth,
        )

    return serve_worker(
        temporal,
        build,
        telemetry_name="orchestrator",
        model=llm_settings.resolved_model,
        offline_model=llm_settings.offline,
        tool_endpoints=settings.tool_endpoints,
        signed_endpoints=sorted(auth.signing_keys),
    )


if __name__ == "__main__":
    exit_process(main())

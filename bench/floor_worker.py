"""`python -m bench.floor_worker`: the structural floor's worker (`bench.floor`) in its own process.

`bench.stack_throughput` runs it beside the stack's workers, the way `make up` runs them: it reads
its Temporal target from `TEMPORAL_*` (address, namespace, task queue; defaults: the orchestrator
namespace, task queue `bench-floor`) and, like the orchestrator, signs every Nexus call with the
keys in `NEXUS_AUTH_SIGNING_KEYS` (best as a file in SECRETS_DIR), since the stack's teams refuse
unsigned calls. SIGINT/SIGTERM drain it.

`FloorWorkflow` is imported from `bench.floor`: a module that defines a workflow must never be
`__main__`, and this one defines none.
"""

from __future__ import annotations

from pydantic import Field
from temporalio.client import Client
from temporalio.worker import Interceptor, UnsandboxedWorkflowRunner, Worker

from bench.floor import FLOOR_TASK_QUEUE, FloorWorkflow, floor_noop
from shared.auth import CallerTokenInterceptor, NexusAuthSettings
from shared.config import ConfigError, OrchestratorTemporalSettings, load_settings
from shared.log import configure_logging, get_logger
from shared.temporal import exit_process
from shared.worker import serve_worker

log = get_logger(__name__)


class FloorTemporalSettings(OrchestratorTemporalSettings):
    task_queue: str = Field(default=FLOOR_TASK_QUEUE, min_length=1)


def build_signed_floor_worker(client: Client, task_queue: str, auth: NexusAuthSettings) -> Worker:
    interceptors: list[Interceptor] = []
    if auth.signing_keys:
        interceptors.append(CallerTokenInterceptor(auth.signing(), auth.caller))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorWorkflow],
        activities=[floor_noop],
        interceptors=interceptors,
        # Like the orchestrator's default: the floor must not pay for a sandbox the agent skips.
        workflow_runner=UnsandboxedWorkflowRunner(),
    )


def main() -> int:
    configure_logging()
    try:
        temporal = load_settings(FloorTemporalSettings)
        auth = load_settings(NexusAuthSettings)
    except ConfigError as err:
        log.error(str(err))
        return 2
    return serve_worker(
        temporal,
        lambda client: build_signed_floor_worker(client, temporal.task_queue, auth),
        telemetry_name="floor",
        signed_endpoints=sorted(auth.signing_keys),
    )


if __name__ == "__main__":
    exit_process(main())

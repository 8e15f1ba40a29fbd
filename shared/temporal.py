"""One client factory for every process: data converter, TLS and API key in one place."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, Interceptor, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode

from shared import telemetry
from shared.config import TemporalSettings

# The Rust core's own log lines (connection retries, poller errors) arrive on this logger.
CORE_LOGGER_NAME = "temporalio.core"

_runtime_installed = False


def install_runtime(metrics_bind_address: str = "") -> None:
    """Make the process's default Temporal runtime forward core logs to Python logging, once,
    and serve Prometheus metrics (the SDK's and ours) on `metrics_bind_address` if given.

    Left alone, the core writes its WARN lines (e.g. "gRPC call ... retried 5 times" while a server
    restarts) straight to stdout, which corrupts `agent ... --json` output. Forwarded, they go
    through the root logger, whose handler (shared.log) writes to stderr like every other log line.
    Clients and workers made before this call keep the runtime they were made with.
    """
    global _runtime_installed
    if _runtime_installed:
        return
    _runtime_installed = True
    logging_config = LoggingConfig(
        # The SDK's default levels: core warnings and errors, other crates' errors only.
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER_NAME)),
    )
    metrics = None
    if metrics_bind_address:
        metrics = PrometheusConfig(
            bind_address=metrics_bind_address,
            counters_total_suffix=True,
            durations_as_seconds=True,
            histogram_bucket_overrides=telemetry.HISTOGRAM_BUCKETS,
        )
    runtime = Runtime(telemetry=TelemetryConfig(logging=logging_config, metrics=metrics))
    Runtime.set_default(runtime, error_if_already_set=False)


async def connect(
    settings: TemporalSettings,
    *,
    namespace: str | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    tls: TLSConfig | bool = False
    if settings.tls_enabled:
        tls = TLSConfig(
            server_root_ca_cert=_read(settings.tls_server_ca_path),
            client_cert=_read(settings.tls_cert_path),
            client_private_key=_read(settings.tls_key_path),
        )
    install_runtime()
    return await Client.connect(
        settings.address,
        namespace=namespace or settings.namespace,
        api_key=settings.api_key,
        tls=tls,
        data_converter=pydantic_data_converter,
        interceptors=interceptors,
        plugins=telemetry.plugins(),
    )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


async def connect_when_ready(
    settings: TemporalSettings,
    *,
    wait_seconds: float = 60.0,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect, waiting for a server that is (re)starting: workers outlive server restarts."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            return await connect(settings, interceptors=interceptors)
        except RuntimeError:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class NamespaceMissingError(Exception):
    pass


async def require_namespace(client: Client) -> None:
    """Fail with one clear line when the namespace does not exist (instead of a gRPC dump)."""
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceMissingError(
                f"namespace '{client.namespace}' does not exist on this server: create it "
                "(`make up`, `python -m infrastructure.setup`, or Terraform on Cloud) or fix "
                "TEMPORAL_NAMESPACE"
            ) from None
        raise


def exit_process(code: int) -> NoReturn:
    """Leave a process that used a Temporal client with `code`, skipping interpreter finalisation.

    The Temporal core runtime's threads outlive the last client, and the SDK has no way to stop
    them; finalising while one of them holds a Python object aborts the process (`Fatal Python
    error: PyGILState_Release`, exit 134) after its work was done: a drained worker looks crashed
    to its container runtime, and a CLI run whose answer was printed looks failed to a script.
    """
    telemetry.flush_spans()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be told
            pass
    os._exit(code)

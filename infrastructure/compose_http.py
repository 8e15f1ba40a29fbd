"""The compose rehearsal's HTTP services: a built service that publishes ports (the gateway)
serves requests instead of polling a task queue, so it is started, waited for and talked to
differently from a worker.

- Started like a worker (its real command, env files and volumes, `LocalCompose.prepare`), with
  the same 127.0.0.1 override: each published container port gets a local port. The service reads
  its listen address from a `<PREFIX>_HOST` / `<PREFIX>_PORT` pair whose port is the published
  one (GATEWAY_HOST=0.0.0.0, GATEWAY_PORT=8088): the pair becomes 127.0.0.1 and the local port.
  A pair that does not listen on every interface in its container is refused: the published
  port would reach nothing. `<service>:<port>`, and the service's own loopback on that port (its
  health check's URL), map to the local address.
- Healthy when its health route (the path of the compose health check's `--get` URL) answers
  200 with {"ok": true}, and then the compose health check itself passes.
- Talked to as a user would: an API key made with the `agent` CLI as `docker compose exec
  <service> agent keys create` would make it (the image's own `agent`, the service's environment,
  its writable layer as the working directory), then a conversation and a message over HTTP, the
  turn read from its server-sent events up to its answer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import SSEError, connect_sse

from infrastructure.compose_file import compose_env
from infrastructure.compose_local import LOCAL_HOST, LocalCompose, RehearsalError
from infrastructure.postgres import free_port

# Values of a `<PREFIX>_HOST` that listen on every interface of the container.
ALL_INTERFACES = ("0.0.0.0", "::", "[::]")
DEFAULT_HEALTH_PATH = "/healthz"
EVENT_STREAM = "text/event-stream"
TURN_END_EVENTS = ("answer", "error")


def published_ports(service: Mapping[str, Any]) -> list[int]:
    """The container ports a service publishes (`ports`, short or long syntax)."""
    ports: list[int] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            target = str(entry["target"])
        else:
            target = str(entry).rpartition(":")[2]
        ports.append(int(target.split("/")[0].split("-")[0]))
    return list(dict.fromkeys(ports))


def is_http_service(service: Mapping[str, Any]) -> bool:
    """A service we build that publishes a port: it serves requests (workers publish nothing)."""
    return "build" in service and bool(published_ports(service))


def listen_variables(name: str, env: Mapping[str, str], container_port: int) -> list[str]:
    """The `<PREFIX>_PORT` variables that make the service listen on `container_port`; each one's
    `<PREFIX>_HOST` must listen on every interface, or the published port reaches nothing."""
    keys = [k for k, v in env.items() if k.endswith("_PORT") and v.strip() == str(container_port)]
    if not keys:
        raise RehearsalError(
            f"{name} publishes port {container_port}, but no *_PORT variable of its environment "
            "says it listens there (the rehearsal gives it a local port through that variable)"
        )
    for key in keys:
        host_key = key.removesuffix("_PORT") + "_HOST"
        host = env.get(host_key, "")
        if host not in ALL_INTERFACES:
            raise RehearsalError(
                f"{name} publishes port {container_port} but listens on {host_key}="
                f"{host or '(unset)'} inside its container: the published port reaches nothing "
                "(set it to 0.0.0.0)"
            )
    return keys


def health_path(service: Mapping[str, Any]) -> str:
    """The path its compose health check GETs (`--get <url>`), else /healthz."""
    test = [str(arg) for arg in (service.get("healthcheck") or {}).get("test") or []]
    if "--get" in test[:-1]:
        return urlsplit(test[test.index("--get") + 1]).path or "/"
    return DEFAULT_HEALTH_PATH


@dataclass
class HttpService:
    name: str
    # Container port -> local address ("127.0.0.1:<port>").
    addresses: dict[int, str]
    health: str

    @property
    def url(self) -> str:
        """The base URL of its first published port."""
        return f"http://{next(iter(self.addresses.values()))}"


def prepare_http_service(compose: LocalCompose, name: str) -> HttpService:
    """Give each published port a local port and prepare the service's process (kept in
    `compose.workers`, so it is started, stopped and restarted like a worker; a recreated
    container keeps its ports)."""
    service = compose.services[name]
    env = compose_env(service, compose.base)
    local_ports: dict[str, str] = {}
    addresses: dict[int, str] = {}
    for port in published_ports(service):
        keys = listen_variables(name, env, port)
        local = free_port()
        addresses[port] = compose.overrides.listen(name, port, local)
        for key in keys:
            local_ports[key] = str(local)
    process = compose.prepare(name)
    for key, local_port in local_ports.items():
        process.env[key] = local_port
        process.env[key.removesuffix("_PORT") + "_HOST"] = LOCAL_HOST
    compose.workers[name] = process
    return HttpService(name, addresses, health_path(service))


async def wait_for_http(
    compose: LocalCompose, services: list[HttpService], timeout: float = 60.0
) -> None:
    """Until each service's health route answers {"ok": true}, then its compose health check."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        for http in services:
            process = compose.workers[http.name]
            assert process.process is not None
            url = http.url + http.health
            while True:
                if process.process.poll() is not None:
                    raise RehearsalError(f"{http.name} exited:\n{process.tail()}")
                try:
                    response = await client.get(url)
                    if response.status_code == 200 and response.json() == {"ok": True}:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RehearsalError(f"{http.name} does not answer {url}:\n{process.tail()}")
                await asyncio.sleep(0.2)
            compose._healthcheck(http.name)


# ---- talking to it as a user ----------------------------------------------------------------------


def image_agent(compose: LocalCompose, name: str) -> list[str]:
    """The `agent` command of the service's image (a copied script named agent in a bin folder),
    else this environment's console script."""
    for target, local in compose.overrides.mounts.get(name, {}).items():
        path = PurePosixPath(target)
        if path.name == "agent" and path.parent.name == "bin" and local.is_file():
            return [sys.executable, str(local)]
    binary = Path(sys.executable).parent / "agent"
    if binary.exists():
        return [str(binary)]
    raise RehearsalError(f"{name}: its image has no `agent` command and neither has this one")


def create_key(compose: LocalCompose, name: str, user: str, label: str) -> dict[str, Any]:
    """`docker compose exec <name> agent keys create USER --json`: the key, made in the store the
    service reads, with the service's own environment."""
    process = compose.workers[name]
    result = subprocess.run(
        [*image_agent(compose, name), "keys", "create", user, "--label", label, "--json"],
        env={**process.env, "LOG_LEVEL": "WARNING"},
        cwd=process.layer,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RehearsalError(
            f"agent keys create in {name} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-600:]}"
        )
    created = json.loads(lines[-1])
    if not isinstance(created, dict) or not str(created.get("key", "")):
        raise RehearsalError(f"agent keys create printed no key: {lines[-1][:200]}")
    return created


@dataclass
class StreamedTurn:
    """One message's server-sent events: their kinds in order, the tools they name, the end."""

    kinds: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    end: str = ""
    text: str = ""


@dataclass
class GatewayClient:
    """The gateway's API with one user's key."""

    url: str
    key: str
    timeout: float = 120.0

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(10.0, read=self.timeout),
            trust_env=False,  # no proxy for 127.0.0.1
        )

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 300:
            raise RehearsalError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
        body = response.json()
        if not isinstance(body, dict):
            raise RehearsalError(f"{what}: not a JSON object: {response.text[:300]}")
        return body

    def me(self) -> str:
        with self._client() as client:
            return str(self._json(client.get("/v1/me"), "GET /v1/me").get("user"))

    def create_conversation(self, title: str) -> str:
        with self._client() as client:
            body = self._json(
                client.post("/v1/conversations", json={"title": title}), "POST /v1/conversations"
            )
        return str(body["conversation_id"])

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        with self._client() as client:
            path = f"/v1/conversations/{conversation_id}"
            return self._json(client.get(path), f"GET {path}")

    def send(self, conversation_id: str, text: str) -> StreamedTurn:
        """POST the message with Accept: text/event-stream; read events up to the answer."""
        path = f"/v1/conversations/{conversation_id}/messages"
        turn = StreamedTurn()
        deadline = time.monotonic() + self.timeout
        with (
            self._client() as client,
            connect_sse(
                client, "POST", path, json={"text": text}, headers={"Accept": EVENT_STREAM}
            ) as source,
        ):
            if source.response.status_code != 200:
                source.response.read()
                raise RehearsalError(
                    f"POST {path}: HTTP {source.response.status_code} {source.response.text[:300]}"
                )
            try:
                for sse in source.iter_sse():
                    turn.kinds.append(sse.event)
                    data = sse.json() if sse.data else {}
                    event = data.get("event") or {}
                    if sse.event == "tool_started" and event.get("tool"):
                        turn.tools.append(f"{event.get('service')}.{event['tool']}")
                    if sse.event in TURN_END_EVENTS:
                        turn.end, turn.text = sse.event, str(data.get("text") or "")
                        break
                    if time.monotonic() > deadline:
                        break
            except SSEError as error:
                raise RehearsalError(f"POST {path}: not an event stream: {error}") from None
        if turn.end != "answer":
            raise RehearsalError(
                f"the gateway's stream ended with {turn.end or 'no answer'}: {turn.text[:300]} "
                f"(events: {', '.join(turn.kinds)})"
            )
        return turn

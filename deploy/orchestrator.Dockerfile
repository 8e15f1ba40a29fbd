# syntax=docker/dockerfile:1
# Orchestrator worker: conversation workflows and the LLM activity (litellm lives here only).
# The HTTP gateway runs from the same image (docker-compose.yml: command python -m orchestrator.gateway).
# Build from the repository root: docker build -f deploy/orchestrator.Dockerfile .
# Installs only the core dependencies and the `orchestrator` dependency group from the committed uv.lock.

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# The project itself is not installed: the service runs from its source folders with `python -m`.
RUN uv sync --frozen --no-default-groups --group orchestrator --no-install-project --python /usr/local/bin/python3.11

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY shared/ ./shared/
COPY orchestrator/ ./orchestrator/
COPY deploy/healthcheck.py /usr/local/bin/healthcheck.py
# `agent` (keys, store, history) for `docker compose exec`: the project is not installed here.
COPY --chmod=0755 deploy/agent /usr/local/bin/agent
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
USER app
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "orchestrator.worker"]
CMD ["python", "-m", "orchestrator.worker"]

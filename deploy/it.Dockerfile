# syntax=docker/dockerfile:1
# IT team's tool service: Nexus handler, tool workflows and activities, and its triage agent
# (LiteLLM, from the `agents` group that the `it` group includes).
# Build from the repository root: docker build -f deploy/it.Dockerfile .
# Installs only the core dependencies and the `it` dependency group from the committed uv.lock.

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# The project itself is not installed: the service runs from its source folders with `python -m`.
RUN uv sync --frozen --no-default-groups --group it --no-install-project --python /usr/local/bin/python3.11

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
# The mount point of a named volume, owned by the app user: a new volume takes this owner.
RUN mkdir -p /var/lib/agent/it && chown app:app /var/lib/agent/it && chmod 700 /var/lib/agent/it
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY shared/ ./shared/
COPY it_service/ ./it_service/
COPY deploy/healthcheck.py /usr/local/bin/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
USER app
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py", "it_service.worker"]
CMD ["python", "-m", "it_service.worker"]

# syntax=docker/dockerfile:1.20
# 1.20+: COPY --parents (keeps each team's folder) is generally available from this release on.
# One-shot stack setup: namespaces and Nexus endpoints on a self-hosted server (python -m infrastructure.setup).
# Build from the repository root: docker build -f deploy/setup.Dockerfile .
# Installs the core dependencies and the `store` group (psycopg, to make the orchestrator's database)
# from the committed uv.lock.
# Exits 0 once everything exists; compose starts the workers only after that.

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# The project itself is not installed: the service runs from its source folders with `python -m`.
RUN uv sync --frozen --no-default-groups --group store --no-install-project --python /usr/local/bin/python3.11

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
# The mount point of a named volume, owned by the app user: a new volume takes this owner.
RUN mkdir -p /var/lib/agent/orchestrator-secrets && chown app:app /var/lib/agent/orchestrator-secrets && chmod 700 /var/lib/agent/orchestrator-secrets
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY shared/ ./shared/
COPY infrastructure/ ./infrastructure/
# What to create comes from the team manifests, each in its team's folder (/app/<team>/team.toml),
# where the setup finds them next to shared/. Only the manifests: no team code is in this image.
COPY --parents */team.toml ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
USER app
CMD ["python", "-m", "infrastructure.setup"]

# syntax=docker/dockerfile:1
# ChainFeed image: `docker build -t chainfeed .`, run with the settings of ../shared/SPEC.md
# (docker-compose.yml is the worked example). Dependencies come from uv.lock, exactly.

# --- build: resolve the locked environment into /app/.venv -----------------------------------
FROM python:3.11-slim AS build

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src
# Dependencies first (a layer that survives code changes), then the project itself, non-editable.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime: the interpreter, the environment, an unprivileged user ---------------------------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 chainfeed \
 && useradd --system --uid 10001 --gid chainfeed --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin chainfeed
COPY --from=build --chown=root:root /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHAINFEED_LOG_FORMAT=json

WORKDIR /app
USER chainfeed:chainfeed
EXPOSE 8000

# Liveness only (the process serves HTTP); /readyz is for the proxy and the on-call.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# `serve` applies pending migrations (under an advisory lock: replicas may start together),
# then listens on 0.0.0.0:8000 (exec form: SIGTERM from `docker stop` reaches uvicorn directly).
CMD ["chainfeed", "serve"]

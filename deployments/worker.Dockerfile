# A Prefect process worker for this project's deployments, to run on other machines (scale out: one per machine).
#
#   docker build -f deployments/worker.Dockerfile -t agentbox-worker .
#   docker run -d --restart unless-stopped --env-file .env \
#       -e PREFECT_API_URL=http://your-prefect-server:4200/api agentbox-worker
#
# Sessions run on E2B: Claude Code and the MCP servers live in the E2B sandbox, so the image needs only Python.
# (The local bubblewrap backend and rehearsals need user namespaces and the npm tools; run those on a host.)
# The .env holds E2B_API_KEY, ANTHROPIC_API_KEY, NOTION_INTEGRATION_TOKEN, GITHUB_TOKEN: never bake them in.
FROM python:3.11-slim-bookworm

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 \
    SANDBOX_BACKEND=e2b PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY agentbox ./agentbox
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
COPY prefect.yaml ./
RUN uv sync --frozen --no-dev && useradd --create-home --uid 1000 agentbox
USER agentbox

# The deployments' entrypoints (flows/...) are relative to /app, where the worker runs them.
CMD ["prefect", "worker", "start", "--pool", "agentbox", "--type", "process", "--limit", "4"]

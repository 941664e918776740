# The two commands of the README: `make demo` and `make test`. Each installs what it needs first:
# uv and the locked Python environment, the pinned npm tools, bubblewrap, and (for the UI tests) Debian's chromium.
UV_VERSION := 0.13.9
UV_HOME := $(HOME)/.local/share/agentbox-uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup bytecode bubblewrap chromium demo test bench server server-stop

setup: .venv/.synced node_modules/.installed bubblewrap bytecode

$(UV_HOME)/bin/uv:
	python3 -m venv $(UV_HOME) && $(UV_HOME)/bin/pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: every process (the CLI, each sandbox's gateway, the supervisors) then reads compiled modules
# instead of compiling them again: a sandbox mounts the environment read-only and cannot keep what it compiles, nor can
# a machine with PYTHONDONTWRITEBYTECODE set. It halves the gateway's start (2.1 s of imports to 0.9 s).
.venv/.synced: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --frozen --all-groups --compile-bytecode
	touch $@

# The project's own modules, for the same reason (only those changed since are compiled: about 0.1 s), and the
# gateway's credential patterns, compiled once into the environment (3.5 s; a gateway then loads them in 0.3 s).
bytecode: .venv/.synced .venv/share/agentbox/kingfisher-rules/.warm
	@.venv/bin/python -m compileall -q agentbox flows tasks deployments

.venv/share/agentbox/kingfisher-rules/.warm: .venv/.synced $(wildcard agentbox/gateway/rules/*.yaml)
	@.venv/bin/python -m agentbox.gateway.patterns
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

bubblewrap:
	@command -v bwrap >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap; }

# The browser the UI tests drive (Playwright's own download cannot be used here: it points at this one).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# At a terminal the demo asks you before the agent opens its issue; without one it runs unattended, and says so.
DEMO_APPROVAL := $(shell [ -t 0 ] && echo --approve || echo --require-approval=)

# LOCAL_WARM_GATEWAY: each demo leaves a warm spare gateway for the next one (it stops by itself after 10 minutes).
# .venv/bin/python, not `uv run`: setup has just synced the environment, and uv would check it again (0.1 s).
demo: setup
	LOCAL_WARM_GATEWAY=$${LOCAL_WARM_GATEWAY:-true} .venv/bin/python -m flows.notion_to_github --repo octo-org/demo \
		--rehearsal $(DEMO_APPROVAL)

# A Prefect server with its UI on loopback, kept in the background with the sandbox limit (and the work pool) it
# needs: `make demo` and every `python -m flows...` then run there (no temporary server per run) and show in its UI.
PREFECT_PORT := 4200
define WAIT_FOR_SERVER
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the Prefect server did not answer within 2 minutes: see `prefect server start` without --background")
endef
export WAIT_FOR_SERVER
server: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_URL=http://127.0.0.1:$(PREFECT_PORT) \
		PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem \
		$(UV) run prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) --background
	@$(UV) run python -c "$$WAIT_FOR_SERVER" http://127.0.0.1:$(PREFECT_PORT)/api/health
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(UV) run python -m deployments.bootstrap --sandboxes 5
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (make server-stop stops it)"

server-stop: setup
	$(UV) run prefect server stop

test: setup chromium
	$(UV) run ruff check .
	$(UV) run pytest

bench: setup
	.venv/bin/python benchmarks/speed.py
	.venv/bin/python benchmarks/leases.py
	.venv/bin/python benchmarks/gateway_latency.py
	.venv/bin/python benchmarks/tracing.py

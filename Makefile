# The two commands of the README: `make demo` and `make test`. Each installs what it needs first:
# uv and the locked Python environment, the pinned npm tools, bubblewrap, and (for the UI tests) Debian's chromium.
UV_VERSION := 0.13.9
UV_HOME := $(HOME)/.local/share/agentbox-uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup bubblewrap chromium demo test bench

setup: .venv/.synced node_modules/.installed bubblewrap

$(UV_HOME)/bin/uv:
	python3 -m venv $(UV_HOME) && $(UV_HOME)/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups
	touch $@

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

demo: setup
	$(UV) run python -m flows.notion_to_github --repo octo-org/demo --rehearsal $(DEMO_APPROVAL)

test: setup chromium
	$(UV) run ruff check .
	$(UV) run pytest

bench: setup
	$(UV) run python benchmarks/session_steps.py

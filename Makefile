# The two commands of the README: `make demo` and `make test`. Each installs what it needs first:
# uv and the locked Python environment, the pinned npm tools, and bubblewrap.
UV_VERSION := 0.13.9
UV_HOME := $(HOME)/.local/share/agentbox-uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup bubblewrap demo test bench

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

demo: setup
	$(UV) run python -m flows.notion_to_github --repo octo-org/demo --rehearsal

test: setup
	$(UV) run ruff check .
	$(UV) run pytest

bench: setup
	$(UV) run python benchmarks/session_steps.py

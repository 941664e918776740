# The two commands of the README: `make demo` and `make test`. Each installs what it needs first:
# uv and the locked Python environment, the pinned npm tools, and bubblewrap.
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench clean-sandboxes

setup: .venv/.synced node_modules/.installed /usr/bin/bwrap

$(UV):
	python3 -m pip install --user --quiet "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

/usr/bin/bwrap:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap

demo: setup
	$(UV) run python -m flows.notion_to_github --repo octo-org/demo --rehearsal

test: setup
	$(UV) run pytest

bench: setup
	$(UV) run python benchmarks/session_steps.py

clean-sandboxes: setup
	$(UV) run python -m flows.reap_sandboxes --all 2>/dev/null || true

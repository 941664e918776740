"""Test session setup: an isolated Prefect home and sandbox root, no real credentials, one Prefect test harness.

The real components run everywhere (bubblewrap, the gateway, the official MCP servers, the `claude` binary, a real
Prefect API); only Anthropic, Notion and GitHub are replaced, by the rehearsal stand-ins. Helpers the tests share
live in tests/support.py, which also isolates the environment as soon as it is imported (here, first).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support import SESSION_DIR, WORKDIR, sandbox_dirs, sandbox_processes, wait_for_no_sandbox_processes

pytest_plugins = ["tests.deployed"]  # a real Prefect server with the deployments, for the tests that ask for it


@pytest.fixture(scope="session", autouse=True)
def away_from_the_checkout():
    """Settings read `.env` from the working directory: run every test where there is none."""
    previous = os.getcwd()
    os.chdir(WORKDIR)
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (a real API server on a temporary database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    import asyncio

    from agentbox.settings import load_settings
    from tasks.sandbox import ensure_sandbox_limit

    with prefect_test_harness(server_startup_timeout=120):
        # Sessions hold a slot of the sandbox limit; a flow process killed on purpose keeps its slot until its lease
        # ends (5 minutes), so the tests' limit is roomy. test_deployments.py checks the limit itself.
        asyncio.run(ensure_sandbox_limit(load_settings(), slots=50))
        yield


@pytest.fixture
def no_leftovers():
    """Asserts that a test leaves no sandbox behind: no process, no state directory."""
    before = frozenset(sandbox_processes())  # processes that are not this test's (a developer's gateway, say)
    yield
    assert wait_for_no_sandbox_processes(ignore=before) == []
    assert sandbox_dirs() == []


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """GitHub and Notion stand-ins for the whole session (see tests/worlds.py)."""
    from contextlib import ExitStack

    from tests.worlds import Services

    with ExitStack() as stack:
        yield Services.start(stack, tmp_path_factory.mktemp("services"))


@pytest.fixture(scope="session")
def e2b_standin(services):
    """One offline E2B for the session, started by the first test that needs it."""
    from tests.e2b_standin import E2BStandIn

    with E2BStandIn(catalog_file=str(services.catalog)) as e2b:
        yield e2b


@pytest.fixture(params=["local", "e2b"])
def world(request, services, monkeypatch, no_leftovers):
    """A production run's remote services on this machine, once per backend; no sandbox may outlive the test."""
    from tests.worlds import World

    e2b = request.getfixturevalue("e2b_standin") if request.param == "e2b" else None
    if e2b:
        e2b.clear_faults()
    world = World(request.param, services, e2b, monkeypatch.setenv)
    try:
        yield world
    finally:
        world.close()
    if e2b:
        e2b.clear_faults()
    assert world.leftovers() == [], f"left running on {world.backend}"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (`item.rep_call`), so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

"""A backend registered before a run form or a command line is built is offered by both, and accepted."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from agentbox.sandboxes import BACKENDS, register_backend
from flows.agent_session import agent_session
from flows.commands.notion_to_github import parser as notion_to_github_parser
from flows.notion_to_github import notion_to_github


@pytest.fixture
def another_backend():
    register_backend("elsewhere", "agentbox.sandboxes.local:LocalSandboxes")  # imported, never run here
    yield "elsewhere"
    BACKENDS.pop("elsewhere")


def test_a_backend_registered_after_the_flows_were_imported_reaches_the_form_and_the_parser(another_backend):
    for flow in (notion_to_github, agent_session):
        assert parameter_schema(flow).properties["backend"]["enum"] == ["auto", "local", "e2b", another_backend]
    arguments = notion_to_github_parser().parse_args(["--repo", "octo/demo", "--backend", another_backend])
    assert arguments.backend == another_backend
    assert notion_to_github.validate_parameters({"issue": {"repo": "octo/demo"}, "backend": another_backend}
                                                )["backend"] == another_backend


def test_an_unregistered_backend_is_refused_by_the_form_and_the_parser(capsys):
    with pytest.raises(Exception, match="must be one of: auto, local, e2b"):
        notion_to_github.validate_parameters({"issue": {"repo": "octo/demo"}, "backend": "elsewhere"})
    with pytest.raises(SystemExit):
        notion_to_github_parser().parse_args(["--repo", "octo/demo", "--backend", "elsewhere"])
    assert "invalid choice: 'elsewhere'" in capsys.readouterr().err

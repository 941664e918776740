"""prefect.yaml is valid offline: its schema, every entrypoint loads, the parameters validate, the schedules parse;
the serve entry point reads the same file; the worker image copies what exists and polls the pool prefect.yaml uses."""

from __future__ import annotations

import re

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import load_flow_from_entrypoint

from deployments.serve import deployments, schedule
from flows.agent_session import SessionRequest
from flows.notion_to_github import IssueRequest
from tests.support import PROJECT

SPEC = yaml.safe_load((PROJECT / "prefect.yaml").read_text())


def test_the_schema_holds_and_every_entrypoint_loads_with_valid_parameters(monkeypatch):
    monkeypatch.chdir(PROJECT)
    model = PrefectYamlModel.model_validate(SPEC)
    assert {d.name for d in model.deployments} == {"notion-to-github", "notion-to-github-batch", "agent-session",
                                                    "reap-sandboxes"}
    for deployment in model.deployments:
        flow = load_flow_from_entrypoint(deployment.entrypoint)
        if deployment.parameters:
            validated = flow.validate_parameters(deployment.parameters)  # raises on a bad parameter
            assert set(deployment.parameters) <= set(validated)
        else:  # the UI asks for the request; everything else has a default
            assert flow.parameters.required == ["request"]
        for parameter in flow.parameters.properties:
            assert not any(word in parameter.lower() for word in ("token", "key", "secret", "password"))
        assert deployment.work_pool.name == "agentbox"


def test_the_schedules_parse():
    by_name = {d["name"]: [schedule(s).schedule for s in d.get("schedules") or []] for d in SPEC["deployments"]}
    (daily,) = by_name["notion-to-github"]
    assert (daily.cron, daily.timezone) == ("0 8 * * *", "Europe/Paris")  # every day at 08:00, Paris time
    assert [s.interval.total_seconds() for s in by_name["reap-sandboxes"]] == [300]
    assert by_name["agent-session"] == []


def test_serve_builds_the_same_deployments_from_prefect_yaml():
    served = {d.name: d for d in deployments()}
    assert set(served) == {d["name"] for d in SPEC["deployments"]}
    assert served["notion-to-github"].parameters == {"issue": {"repo": "octo-org/demo"}, "rehearsal": True}
    assert served["notion-to-github"].schedules[0].schedule.cron == "0 8 * * *"
    assert served["reap-sandboxes"].tags == ["agentbox", "janitor"]


def test_the_parameter_forms_describe_every_field():
    for model in (IssueRequest, SessionRequest):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description for the UI's form"
    with pytest.raises(ValueError):
        SessionRequest(prompt="", mcp={})


def test_the_worker_image_copies_what_exists_and_polls_the_pool_of_prefect_yaml():
    dockerfile = (PROJECT / "deployments" / "worker.Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (PROJECT / source).exists(), f"the image copies {source}, which does not exist"
    pools = {d["work_pool"]["name"] for d in SPEC["deployments"]}
    assert pools == {"agentbox"}
    assert '"--pool", "agentbox"' in dockerfile

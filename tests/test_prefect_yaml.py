"""prefect.yaml is valid offline: its schema, every entrypoint loads, and the parameters validate."""

from __future__ import annotations

import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import load_flow_from_entrypoint

from tests.conftest import PROJECT


def test_every_deployment_loads_and_its_parameters_validate(monkeypatch):
    monkeypatch.chdir(PROJECT)
    model = PrefectYamlModel.model_validate(yaml.safe_load((PROJECT / "prefect.yaml").read_text()))
    names = {d.name for d in model.deployments}
    assert names == {"notion-to-github", "agent-session", "reap-sandboxes"}
    for deployment in model.deployments:
        flow = load_flow_from_entrypoint(deployment.entrypoint)
        if deployment.parameters:
            validated = flow.validate_parameters(deployment.parameters)  # raises on a bad parameter
            assert set(deployment.parameters) <= set(validated)
        for parameter in flow.parameters.properties:
            assert not any(word in parameter.lower() for word in ("token", "key", "secret", "password"))

"""The E2B template that pre-pulls the MCP servers: the definition the real SDK would send to E2B's builder."""

from __future__ import annotations

import json

from deployments.e2b_template import main


def test_the_definition_pulls_the_flows_servers_on_top_of_e2bs_gateway(capsys):
    assert main(["--print"]) == 0
    definition = json.loads(capsys.readouterr().out)
    assert definition["fromTemplate"] == "mcp-gateway"
    assert [step["args"][0] for step in definition["steps"]] == ["mcp-gateway pull notion githubOfficial"]


def test_unknown_servers_are_refused_with_the_nearest_key(capsys):
    assert main(["--print", "--servers", "notoin", "slack"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: Cannot pre-pull unknown E2B MCP server 'notoin' (did you mean 'notion'?)")
    assert len(err.strip().splitlines()) == 1


def test_building_needs_the_e2b_key(capsys, monkeypatch):
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    assert main(["--name", "agentbox-mcp"]) == 2
    assert "Missing setting E2B_API_KEY" in capsys.readouterr().err

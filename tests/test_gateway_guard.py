"""The gateway's guard on a real gateway process: a secret in a tool's arguments is refused before the server sees
it, a secret in its answer is redacted, and every call is one line of the call log, without argument values."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from fastmcp.exceptions import ToolError

from tests.credentials import github_token
from tests.test_gateway_probe import SERVERS, Gateway, call, pycache  # noqa: F401 - pycache is a fixture

SERVER_TOKEN = "leaky-server-token-0123456789"
MODEL_KEY = "sk-ant-model-key-0123456789"
FOREIGN = github_token()  # a GitHub token of nobody in this run, as someone pasted it in a page
CATALOG = {"leaky": {"command": [sys.executable, str(SERVERS / "leaky_server.py")],
                     "env": {"LEAKY_TOKEN": "{{apiToken}}", "PASTED_CREDENTIAL": FOREIGN}, "tools": ["echo", "leak"]}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, pycache):  # noqa: F811 - the imported fixture
    workdir = tmp_path_factory.mktemp("guard")
    (workdir / "catalog.json").write_text(json.dumps(CATALOG))
    log = workdir / "calls.jsonl"
    gateway = Gateway("guard", workdir, pycache, {"leaky": {"apiToken": SERVER_TOKEN}}, "--call-log", str(log),
                      env={"GATEWAY_SECRET_VALUES": json.dumps([MODEL_KEY])})
    try:
        gateway.wait_ready({"leaky": ["echo", "leak"]})
        yield gateway, log
    finally:
        gateway.stop()


def calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("secret", [SERVER_TOKEN, MODEL_KEY])
def test_a_secret_in_the_arguments_is_refused_before_the_server_sees_it(gateway, secret):
    url, log = gateway[0].url, gateway[1]
    with pytest.raises(ToolError) as info:
        asyncio.run(call(url, "echo", {"text": f"please post {secret} to https://attacker.example"}))
    assert "Blocked by policy: do not retry." in str(info.value)
    assert secret not in str(info.value)
    last = calls(log)[-1]
    assert (last["tool"], last["outcome"], last["arguments"]) == ("echo", "blocked", ["text"])
    assert secret not in log.read_text() and "attacker" not in log.read_text()  # names and sizes only


def test_a_server_gets_its_own_settings_not_the_gateways(gateway):
    """The gateway's token and the sandbox's other secrets (GATEWAY_*) never reach an MCP server's environment."""
    names = asyncio.run(call(gateway[0].url, "environment", {})).split()
    assert "LEAKY_TOKEN" in names and "PATH" in names
    assert not [name for name in names if name.startswith("GATEWAY_")], names


def test_a_secret_in_the_answer_is_redacted(gateway):
    url, log = gateway[0].url, gateway[1]
    answer = asyncio.run(call(url, "leak", {}))
    assert answer == "configured with token *** (and nothing else)"
    last = calls(log)[-1]
    assert (last["tool"], last["outcome"], last["detail"]) == ("leak", "ok", "secret redacted")


def test_an_ordinary_call_passes_and_is_logged(gateway):
    url, log = gateway[0].url, gateway[1]
    assert asyncio.run(call(url, "echo", {"text": "hello"})) == "hello"
    last = calls(log)[-1]
    assert last["outcome"] == "ok" and last["argument_bytes"] == len('{"text": "hello"}') and last["seconds"] >= 0


def test_a_write_made_twice_with_the_same_arguments_is_refused(tmp_path, pycache):  # noqa: F811
    """Given which tools write (--writes, from the run policy), the gateway makes each write once per run: the same
    call again is refused, another one goes through."""
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    log = tmp_path / "calls.jsonl"
    gateway = Gateway("writes", tmp_path, pycache, {"leaky": {"apiToken": SERVER_TOKEN}}, "--call-log", str(log),
                      "--writes", "echo")
    try:
        gateway.wait_ready({"leaky": ["echo", "leak"]})
        assert asyncio.run(call(gateway.url, "echo", {"text": "open the issue"}))
        with pytest.raises(ToolError, match="Blocked by policy: do not retry. This exact call of echo was already"):
            asyncio.run(call(gateway.url, "echo", {"text": "open the issue"}))
        assert asyncio.run(call(gateway.url, "echo", {"text": "another issue"}))
        assert asyncio.run(call(gateway.url, "leak", {})) == asyncio.run(call(gateway.url, "leak", {}))  # no write
    finally:
        gateway.stop()
    assert [(c["tool"], c["outcome"]) for c in calls(log)][:3] == [("echo", "ok"), ("echo", "blocked"), ("echo", "ok")]


def test_a_credential_of_a_known_format_is_refused_and_the_log_names_its_rule(gateway):
    """A token that is no secret of this run (the gateway cannot know its value) is refused by its format."""
    url, log = gateway[0].url, gateway[1]
    with pytest.raises(ToolError) as info:
        asyncio.run(call(url, "echo", {"text": f"The deploy token from the page: {FOREIGN}"}))
    assert "Blocked by policy: do not retry." in str(info.value) and "(github-pat)" in str(info.value)
    assert FOREIGN not in str(info.value)
    last = calls(log)[-1]
    assert (last["tool"], last["outcome"], last["detail"]) == ("echo", "blocked", "a credential in its arguments "
                                                                                  "(github-pat)")
    assert FOREIGN not in log.read_text()


def test_a_credential_in_an_answer_is_redacted(gateway):
    url, log = gateway[0].url, gateway[1]
    assert asyncio.run(call(url, "page", {})) == "Release checklist. Deploy with *** then tag the release."
    assert calls(log)[-1]["detail"] == "credential redacted (github-pat)"


def test_a_run_that_must_pass_credentials_turns_the_patterns_off_not_its_own_secrets(tmp_path, pycache):  # noqa: F811
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    gateway = Gateway("no-patterns", tmp_path, pycache, {"leaky": {"apiToken": SERVER_TOKEN}}, "--no-secret-patterns")
    try:
        gateway.wait_ready({"leaky": ["echo", "leak"]})
        assert asyncio.run(call(gateway.url, "echo", {"text": FOREIGN})) == FOREIGN
        assert FOREIGN in asyncio.run(call(gateway.url, "page", {}))
        with pytest.raises(ToolError, match="contain a secret of this run"):
            asyncio.run(call(gateway.url, "echo", {"text": SERVER_TOKEN}))
    finally:
        gateway.stop()

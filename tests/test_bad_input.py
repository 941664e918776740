"""Bad input gets one clear line on stderr naming the problem and what to do, a non-zero exit, and nothing started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import WORKDIR, sandbox_dirs

CREDENTIALS = {"ANTHROPIC_API_KEY": "sk-x", "NOTION_INTEGRATION_TOKEN": "ntn-x", "GITHUB_TOKEN": "ghp-x"}


def cli(module: str, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    environment.update(env or {})
    environment = {k: v for k, v in environment.items() if v is not None}  # None: unset
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=WORKDIR, env=environment, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert sandbox_dirs() == []
    return lines[0]


@pytest.mark.parametrize("missing", sorted(CREDENTIALS))
def test_each_missing_variable_is_named(missing):
    env = {k: v for k, v in CREDENTIALS.items() if k != missing}
    line = assert_one_line_error(cli("flows.notion_to_github", "--repo", "octo/demo", env=env), f"Missing setting {missing}.", ".env")
    assert not any(other in line for other in CREDENTIALS if other != missing)


def test_every_missing_variable_is_named_in_one_message():
    assert_one_line_error(
        cli("flows.notion_to_github", "--repo", "octo/demo", "--backend", "e2b"),
        "Missing settings ANTHROPIC_API_KEY, E2B_API_KEY, GITHUB_TOKEN, NOTION_INTEGRATION_TOKEN.",
    )


def test_an_empty_variable_counts_as_missing():
    env = {**CREDENTIALS, "GITHUB_TOKEN": "  "}
    assert_one_line_error(cli("flows.notion_to_github", "--repo", "octo/demo", env=env), "Missing setting GITHUB_TOKEN.")


@pytest.mark.parametrize("repo", ["not-a-repo", "a/b/c", "owner/", "/name", "own er/name", "octo/demo.git"])
def test_a_malformed_repo_is_refused(repo):
    assert_one_line_error(cli("flows.notion_to_github", "--repo", repo, env=CREDENTIALS), "owner/name", "--repo OWNER/NAME")


def test_a_malformed_setting_is_named_without_its_value():
    env = {**CREDENTIALS, "CLAUDE_MAX_TURNS": "lots-of-turns"}
    line = assert_one_line_error(cli("flows.notion_to_github", "--repo", "octo/demo", env=env), "CLAUDE_MAX_TURNS")
    assert "lots-of-turns" not in line


def test_an_unknown_catalog_key_is_refused_with_the_nearest_one():
    mcp = json.dumps({"notoin": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}})
    assert_one_line_error(
        cli("flows.agent_session", "--prompt", "hi", "--mcp", mcp, env=CREDENTIALS),
        "unknown MCP server 'notoin' (did you mean 'notion'?)",
    )


def test_a_missing_catalog_field_is_refused_naming_key_and_field():
    assert_one_line_error(
        cli("flows.agent_session", "--prompt", "hi", "--mcp", '{"githubOfficial": {}}', env=CREDENTIALS),
        "server 'githubOfficial' is missing 'githubPersonalAccessToken'",
    )


def test_a_literal_secret_in_the_mcp_config_is_refused():
    mcp = json.dumps({"notion": {"internalIntegrationToken": "ntn_literal_value"}})
    line = assert_one_line_error(cli("flows.agent_session", "--prompt", "hi", "--mcp", mcp, env=CREDENTIALS), "notion.internalIntegrationToken", "${NAME}")
    assert "ntn_literal_value" not in line


def test_invalid_mcp_json_is_refused():
    assert_one_line_error(cli("flows.agent_session", "--prompt", "hi", "--mcp", "{notion:", env=CREDENTIALS), "--mcp is not valid JSON")


def test_a_missing_prompt_file_is_refused(tmp_path):
    mcp = json.dumps({"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}})
    assert_one_line_error(
        cli("flows.agent_session", "--prompt-file", str(tmp_path / "nope.txt"), "--mcp", mcp, env=CREDENTIALS),
        "Cannot read --prompt-file",
    )


def test_a_rehearsal_on_e2b_is_refused():
    assert_one_line_error(
        cli("flows.notion_to_github", "--repo", "octo/demo", "--rehearsal", "--backend", "e2b"),
        "A rehearsal runs on the local backend", "Drop --backend",
    )


NOTION = json.dumps({"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}})


def test_a_prompt_file_that_is_not_utf8_text_is_refused(tmp_path):
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(b"Summarise \xff\xfe\x00 this")
    line = assert_one_line_error(
        cli("flows.agent_session", "--prompt-file", str(binary), "--mcp", NOTION, env=CREDENTIALS),
        f"--prompt-file {binary} is not UTF-8 text", "Pass a UTF-8 text file",
    )
    assert "UnicodeDecodeError" not in line


def test_a_prompt_over_its_bound_is_refused():
    assert_one_line_error(
        cli("flows.agent_session", "--prompt", "x" * 100_001, "--mcp", NOTION, env=CREDENTIALS),
        "The prompt is 100,001 characters; at most 100,000 are accepted.",
    )


@pytest.mark.parametrize("backend", ["local", "e2b"])
def test_a_field_the_server_does_not_have_is_named(backend):
    mcp = json.dumps({"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}", "integrationTokne": "x"}})
    assert_one_line_error(
        cli("flows.agent_session", "--prompt", "hi", "--mcp", mcp, "--backend", backend,
            env={**CREDENTIALS, "E2B_API_KEY": "e2b-x"}),
        "server 'notion' has no field 'integrationTokne' (it has 'internalIntegrationToken')",
    )


def test_an_mcp_config_over_its_bound_is_refused(tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}",
                                             "padding": "p" * 1_000_000}}))
    line = assert_one_line_error(
        cli("flows.agent_session", "--prompt", "hi", "--mcp", f"@{config}", env=CREDENTIALS),
        "larger than an MCP config may be (at most 32,768 bytes)",
    )
    assert "ppppp" not in line and "422" not in line


def test_a_malformed_policy_tool_is_refused():
    assert_one_line_error(
        cli("flows.notion_to_github", "--repo", "octo/demo", "--tools", "create_issue,rm -rf /", env=CREDENTIALS),
        "Invalid --tools (not tool names: 'rm -rf /')",
    )


def test_a_run_that_needs_a_person_and_has_nobody_to_ask_is_refused():
    """notion_to_github asks a person before create_issue; from a command line with neither --approve nor a Prefect
    server behind it, nobody could answer."""
    env = {**CREDENTIALS, "POLICY_REQUIRE_APPROVAL": None, "PREFECT_API_URL": None}
    assert_one_line_error(
        cli("flows.notion_to_github", "--repo", "octo/demo", env=env),
        "Calls of create_issue need a person's approval, and this run has nobody to ask",
        "Pass --approve to answer here, set PREFECT_API_URL",
    )


def test_approve_without_a_terminal_is_refused():
    env = {**CREDENTIALS, "POLICY_REQUIRE_APPROVAL": None}
    assert_one_line_error(cli("flows.notion_to_github", "--repo", "octo/demo", "--approve", env=env),
                          "--approve asks on a terminal, and standard input is not one.")


def test_the_batch_refuses_a_malformed_repo_and_missing_settings_before_anything_starts():
    assert_one_line_error(cli("flows.notion_to_github_batch", "--repo", "octo/a", "--repo", "not-a-repo",
                              env=CREDENTIALS), "--repo")
    assert_one_line_error(cli("flows.notion_to_github_batch", "--repo", "octo/a", "--backend", "e2b"),
                          "Missing settings ANTHROPIC_API_KEY, E2B_API_KEY")

"""Settings, secret handling and the session preflight, read from a real environment and a real `.env` file.

Every test runs in its own empty directory (so no developer `.env` leaks in) with every settings variable removed
from the environment; each test sets exactly what it needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from agentbox.errors import ConfigError
from agentbox.plan import plan_session
from agentbox.secrets import redact, references_in, resolve_references
from agentbox.settings import Settings, load_settings

SECRET_FIELDS = ("E2B_API_KEY", "ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN")
EXTRA_VARS = ("AGENTBOX_TEST_REF", "AGENTBOX_TEST_OTHER", "AGENTBOX_TEST_BLANK")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory (no `.env`) and no settings variable in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in [*(n.upper() for n in Settings.model_fields), *EXTRA_VARS]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return tmp_path


def write_env_file(directory: Path, **values: str) -> None:
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")


# --------------------------------------------------------------------------- require(): missing settings


def test_require_names_every_missing_variable_in_one_error_and_says_where_to_set_them() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError) as info:
        settings.require("ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN")
    message = str(info.value)
    assert "Missing settings ANTHROPIC_API_KEY, GITHUB_TOKEN, NOTION_INTEGRATION_TOKEN." in message
    assert ".env" in message and "environment" in message
    assert info.value.hint.startswith("Set them in")


def test_require_names_only_the_missing_ones_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-present-value")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_present_value")
    settings = load_settings()
    with pytest.raises(ConfigError) as info:
        settings.require("ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN")
    assert info.value.message == "Missing setting NOTION_INTEGRATION_TOKEN."
    assert info.value.hint.startswith("Set it in")
    assert "sk-ant-present-value" not in str(info.value)


def test_require_passes_when_everything_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_FIELDS:
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    load_settings().require(*SECRET_FIELDS)  # no error


def test_require_is_case_insensitive_and_reports_upper_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_case_value")
    settings = load_settings()
    settings.require("github_token")
    with pytest.raises(ConfigError, match=r"Missing setting ANTHROPIC_API_KEY\."):
        settings.require("anthropic_api_key", "github_token")


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_empty_or_whitespace_secret_counts_as_missing(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", blank)
    monkeypatch.setenv("NOTION_INTEGRATION_TOKEN", "ntn_set")
    with pytest.raises(ConfigError) as info:
        load_settings().require("ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN")
    assert info.value.message == "Missing setting ANTHROPIC_API_KEY."


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_or_whitespace_reference_variable_counts_as_missing(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    """A `${NAME}` that is not a settings field is looked up in the environment: blank must be missing there too,
    or a config resolves to a blank credential and fails much later inside the sandbox."""
    monkeypatch.setenv("AGENTBOX_TEST_BLANK", blank)
    with pytest.raises(ConfigError, match=r"Missing setting AGENTBOX_TEST_BLANK\."):
        load_settings().require("AGENTBOX_TEST_BLANK")


# --------------------------------------------------------------------------- load_settings(): malformed values


def test_malformed_values_are_all_named_in_one_error_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_MAX_TURNS", "abc-not-a-number-9137")
    monkeypatch.setenv("MCP_TIMEOUT_MS", "7")  # below the minimum of 1000
    monkeypatch.setenv("SANDBOX_BACKEND", "dockerish-backend")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("Invalid settings: ")
    for name in ("CLAUDE_MAX_TURNS", "MCP_TIMEOUT_MS", "SANDBOX_BACKEND"):
        assert f"{name}: " in message
    for value in ("abc-not-a-number-9137", "dockerish-backend"):
        assert value not in message
    assert "\n" not in message
    assert info.value.hint.startswith("Fix them in")


def test_sandbox_ttl_must_outlive_flow_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "3607")
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "3613")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "SANDBOX_TTL_SECONDS" in message and "FLOW_TIMEOUT_SECONDS" in message
    assert "3607" not in message and "3613" not in message


def test_equal_ttl_and_flow_timeout_is_refused_and_larger_ttl_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "900")
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "900")
    with pytest.raises(ConfigError, match="SANDBOX_TTL_SECONDS"):
        load_settings()
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "901")
    settings = load_settings()
    assert (settings.sandbox_ttl_seconds, settings.flow_timeout_seconds) == (901, 900)


def test_a_bad_field_and_a_too_short_ttl_are_named_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_settings` promises one error naming every bad variable: fixing CLAUDE_MAX_TURNS must not be
    followed by a second round trip for the TTL."""
    monkeypatch.setenv("CLAUDE_MAX_TURNS", "abc")
    monkeypatch.setenv("SANDBOX_TTL_SECONDS", "120")
    monkeypatch.setenv("FLOW_TIMEOUT_SECONDS", "600")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "CLAUDE_MAX_TURNS" in message
    assert "SANDBOX_TTL_SECONDS" in message


def test_valid_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_MAX_TURNS", "30")
    monkeypatch.setenv("CLAUDE_MODEL", "claude-sonnet-4-5")
    monkeypatch.setenv("LOCAL_MCP_CATALOG", "/etc/agentbox/catalog.json")
    settings = load_settings()
    assert settings.claude_max_turns == 30
    assert settings.claude_model == "claude-sonnet-4-5"
    assert settings.local_mcp_catalog == Path("/etc/agentbox/catalog.json")
    assert settings.sandbox_ttl_seconds > settings.flow_timeout_seconds  # the defaults are consistent


# --------------------------------------------------------------------------- secrets stay hidden


def test_secrets_are_secretstr_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {name: f"super-secret-{name.lower()}-4242" for name in SECRET_FIELDS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    for name, value in values.items():
        field = getattr(settings, name.lower())
        assert isinstance(field, SecretStr)
        assert field.get_secret_value() == value
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        for value in values.values():
            assert value not in text
    assert sorted(settings.secret_values()) == sorted(values.values())


def test_secret_values_feed_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_abcdefghijkl")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-zyxwvut")
    settings = load_settings()
    line = "curl -H 'Authorization: token ghp_abcdefghijkl' -H 'x-api-key: sk-ant-zyxwvut' failed"
    assert redact(line, settings.secret_values()) == "curl -H 'Authorization: token ***' -H 'x-api-key: ***' failed"


# --------------------------------------------------------------------------- .env file


def test_dotenv_file_in_the_working_directory_is_read(clean_env: Path) -> None:
    write_env_file(
        clean_env,
        ANTHROPIC_API_KEY="sk-ant-from-dotenv",
        CLAUDE_MAX_TURNS="7",
        AGENTBOX_TEST_REF="value-from-dotenv",
    )
    settings = load_settings()
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-from-dotenv"
    assert settings.claude_max_turns == 7
    settings.require("ANTHROPIC_API_KEY", "AGENTBOX_TEST_REF")  # a non-field reference is found in .env too
    assert settings.resolve_reference("AGENTBOX_TEST_REF") == "value-from-dotenv"


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env_file(clean_env, GITHUB_TOKEN="ghp_from_dotenv", AGENTBOX_TEST_REF="from-dotenv")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_from_environment")
    monkeypatch.setenv("AGENTBOX_TEST_REF", "from-environment")
    settings = load_settings()
    assert settings.resolve_reference("GITHUB_TOKEN") == "ghp_from_environment"
    assert settings.resolve_reference("AGENTBOX_TEST_REF") == "from-environment"


def test_malformed_value_in_dotenv_is_named_without_echoing(clean_env: Path) -> None:
    write_env_file(clean_env, CLAUDE_MAX_TURNS="twelve-ish-5531")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "CLAUDE_MAX_TURNS" in str(info.value)
    assert "twelve-ish-5531" not in str(info.value)


def test_blank_secret_in_dotenv_counts_as_missing(clean_env: Path) -> None:
    write_env_file(clean_env, NOTION_INTEGRATION_TOKEN="", ANTHROPIC_API_KEY="sk-ant-ok")
    with pytest.raises(ConfigError) as info:
        load_settings().require("ANTHROPIC_API_KEY", "NOTION_INTEGRATION_TOKEN")
    assert info.value.message == "Missing setting NOTION_INTEGRATION_TOKEN."


# --------------------------------------------------------------------------- backend default


def test_backend_defaults_to_local_without_e2b_key() -> None:
    assert load_settings().backend == "local"


def test_backend_defaults_to_e2b_with_e2b_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_key_value")
    assert load_settings().backend == "e2b"


def test_backend_from_dotenv_key(clean_env: Path) -> None:
    write_env_file(clean_env, E2B_API_KEY="e2b_key_in_dotenv")
    assert load_settings().backend == "e2b"


def test_explicit_backend_wins_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_key_value")
    monkeypatch.setenv("SANDBOX_BACKEND", "local")
    assert load_settings().backend == "local"
    monkeypatch.delenv("E2B_API_KEY")
    monkeypatch.setenv("SANDBOX_BACKEND", "e2b")
    assert load_settings().backend == "e2b"


def test_empty_e2b_key_means_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "")
    assert load_settings().backend == "local"


# --------------------------------------------------------------------------- ${NAME} references


def test_resolve_references_replaces_every_reference_in_nested_values() -> None:
    config = {
        "notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}", "retries": 3, "debug": True},
        "github": {"args": ["--token", "${GITHUB_TOKEN}", "plain"], "header": "Bearer ${GITHUB_TOKEN}/${OTHER}"},
        "untouched": {"dollar": "$GITHUB_TOKEN", "braces": "{GITHUB_TOKEN}", "none": None},
    }
    values = {"NOTION_INTEGRATION_TOKEN": "ntn_1", "GITHUB_TOKEN": "ghp_2", "OTHER": "x"}
    asked: list[str] = []

    def lookup(name: str) -> str:
        asked.append(name)
        return values[name]

    resolved = resolve_references(config, lookup)
    assert resolved == {
        "notion": {"internalIntegrationToken": "ntn_1", "retries": 3, "debug": True},
        "github": {"args": ["--token", "ghp_2", "plain"], "header": "Bearer ghp_2/x"},
        "untouched": {"dollar": "$GITHUB_TOKEN", "braces": "{GITHUB_TOKEN}", "none": None},
    }
    assert sorted(set(asked)) == ["GITHUB_TOKEN", "NOTION_INTEGRATION_TOKEN", "OTHER"]
    assert config["notion"]["internalIntegrationToken"] == "${NOTION_INTEGRATION_TOKEN}"  # input not mutated


def test_resolve_references_does_not_expand_a_resolved_value_again() -> None:
    resolved = resolve_references({"a": "${ONE}"}, {"ONE": "${TWO}", "TWO": "boom"}.__getitem__)
    assert resolved == {"a": "${TWO}"}


def test_references_in_finds_every_name() -> None:
    config = {
        "notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"},
        "github": {"args": ["${GITHUB_TOKEN}", {"deep": "x ${DEEP_ONE} y ${DEEP_TWO}"}], "n": 5},
        "empty": {},
        "list": [],
        "not_refs": "$PLAIN ${1BAD} ${with-dash}",
    }
    assert references_in(config) == {"NOTION_INTEGRATION_TOKEN", "GITHUB_TOKEN", "DEEP_ONE", "DEEP_TWO"}
    assert references_in({}) == set()
    assert references_in([]) == set()
    assert references_in(42) == set()


def test_resolve_reference_prefers_settings_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTION_INTEGRATION_TOKEN", "ntn_env")
    monkeypatch.setenv("AGENTBOX_TEST_OTHER", "other-from-env")
    settings = load_settings()
    assert settings.resolve_reference("NOTION_INTEGRATION_TOKEN") == "ntn_env"
    assert settings.resolve_reference("AGENTBOX_TEST_OTHER") == "other-from-env"
    assert settings.resolve_reference("CLAUDE_MAX_TURNS") == "12"  # a non-secret field works as well
    with pytest.raises(ConfigError, match=r"Missing setting AGENTBOX_TEST_REF\."):
        settings.resolve_reference("AGENTBOX_TEST_REF")


# --------------------------------------------------------------------------- redact


def test_redact_replaces_every_occurrence_longest_first() -> None:
    text = "token=abcd1234 again abcd1234; prefix abcd; short abc"
    assert redact(text, ["abcd", "abcd1234", "abc", ""]) == "token=*** again ***; prefix ***; short abc"


def test_redact_leaves_text_without_secrets_alone() -> None:
    assert redact("nothing to see", ["s3cr3t-value"]) == "nothing to see"
    assert redact("", ["s3cr3t-value"]) == ""


# --------------------------------------------------------------------------- session preflight (the plan's checks)


def preflight(settings: Settings, mcp: dict, backend: str) -> None:
    plan_session(settings, "Say hello.", mcp, backend=backend)


NOTION_BY_REFERENCE = {"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}
BOTH_BY_REFERENCE = {
    **NOTION_BY_REFERENCE,
    "githubOfficial": {"githubPersonalAccessToken": "${GITHUB_TOKEN}"},
}


def test_preflight_refuses_literal_secret_naming_the_field_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    with pytest.raises(ConfigError) as info:
        preflight(load_settings(), {"notion": {"internalIntegrationToken": "ntn_literal"}}, "local")
    message = str(info.value)
    assert "notion.internalIntegrationToken" in message
    assert "ntn_literal" not in message
    assert "${NAME}" in info.value.hint


def test_preflight_names_every_literal_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    config = {
        "notion": {"internalIntegrationToken": "ntn_literal_one"},
        "githubOfficial": {"githubPersonalAccessToken": "ghp_literal_two"},
    }
    with pytest.raises(ConfigError) as info:
        preflight(load_settings(), config, "local")
    message = str(info.value)
    assert "notion.internalIntegrationToken" in message and "githubOfficial.githubPersonalAccessToken" in message
    assert "ntn_literal_one" not in message and "ghp_literal_two" not in message


def test_preflight_names_all_unset_references_together() -> None:
    with pytest.raises(ConfigError) as info:
        preflight(load_settings(), BOTH_BY_REFERENCE, "local")
    assert info.value.message == "Missing settings ANTHROPIC_API_KEY, GITHUB_TOKEN, NOTION_INTEGRATION_TOKEN."


def test_preflight_on_e2b_also_needs_the_e2b_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("NOTION_INTEGRATION_TOKEN", "ntn_x")
    with pytest.raises(ConfigError) as info:
        preflight(load_settings(), NOTION_BY_REFERENCE, "e2b")
    assert info.value.message == "Missing setting E2B_API_KEY."


def test_preflight_passes_with_references_set_in_dotenv(clean_env: Path) -> None:
    write_env_file(clean_env, ANTHROPIC_API_KEY="sk-ant-x", NOTION_INTEGRATION_TOKEN="ntn_x", GITHUB_TOKEN="ghp_x")
    preflight(load_settings(), BOTH_BY_REFERENCE, "local")  # no error


def test_preflight_checks_the_config_shape_before_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        preflight(load_settings(), {"notoin": {"internalIntegrationToken": "ntn_literal"}}, "local")
    assert "did you mean 'notion'?" in str(info.value)
    assert "ntn_literal" not in str(info.value)


def test_preflight_uses_the_extra_catalog_of_local_mcp_catalog(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = clean_env / "extra-catalog.json"
    catalog.write_text(json.dumps({"linear": {"command": ["linear-mcp"], "env": {"LINEAR_API_KEY": "{{apiKey}}"}}}))
    monkeypatch.setenv("LOCAL_MCP_CATALOG", str(catalog))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    with pytest.raises(ConfigError, match=re.escape("Missing setting AGENTBOX_TEST_REF.")):
        preflight(load_settings(), {"linear": {"apiKey": "${AGENTBOX_TEST_REF}"}}, "local")
    monkeypatch.setenv("AGENTBOX_TEST_REF", "lin_api_x")
    preflight(load_settings(), {"linear": {"apiKey": "${AGENTBOX_TEST_REF}"}}, "local")

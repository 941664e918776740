"""The MCP catalog: the built-in file, extra catalog files, config validation and template rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentbox.errors import ConfigError
from agentbox.gateway.catalog import (
    BUILTIN_CATALOG,
    CatalogEntry,
    expected_tools,
    load_catalog,
    render,
    upstreams,
    validate_config,
)


@pytest.fixture(scope="module")
def builtin() -> dict[str, CatalogEntry]:
    return load_catalog()


def write_catalog(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the built-in catalog


def test_builtin_catalog_has_notion_and_github(builtin: dict[str, CatalogEntry]) -> None:
    assert {"notion", "githubOfficial"} <= set(builtin)
    assert builtin["notion"].command == ["notion-mcp-server"]
    assert builtin["githubOfficial"].command == ["github-mcp-server", "stdio"]
    assert builtin["notion"].required_fields() == ["internalIntegrationToken"]
    assert builtin["githubOfficial"].required_fields() == ["githubPersonalAccessToken"]
    assert "API-post-search" in builtin["notion"].tools
    assert "create_issue" in builtin["githubOfficial"].tools


def test_builtin_catalog_file_is_the_packaged_json() -> None:
    raw = json.loads(BUILTIN_CATALOG.read_text())
    assert set(raw) == set(load_catalog())


def test_render_notion_puts_the_token_into_valid_json_headers(builtin: dict[str, CatalogEntry]) -> None:
    upstream = render("notion", {"internalIntegrationToken": "ntn_abc123"}, builtin["notion"])
    assert upstream.key == "notion"
    assert upstream.command == ["notion-mcp-server"]
    headers = json.loads(upstream.env["OPENAPI_MCP_HEADERS"])
    assert headers["Authorization"] == "Bearer ntn_abc123"
    assert headers["Notion-Version"] == "2022-06-28"
    assert upstream.tools == ("API-post-search",)


def test_render_github(builtin: dict[str, CatalogEntry]) -> None:
    upstream = render("githubOfficial", {"githubPersonalAccessToken": "ghp_xyz"}, builtin["githubOfficial"])
    assert upstream.env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_xyz"}
    assert upstream.command == ["github-mcp-server", "stdio"]
    assert upstream.url is None


# --------------------------------------------------------------------------- templates


def test_render_fills_command_env_url_and_headers() -> None:
    stdio = CatalogEntry(
        command=["srv", "--workspace", "{{workspace}}", "--region={{ region }}"],
        env={"API_KEY": "{{apiKey}}", "STATIC": "no-template", "BOTH": "{{workspace}}:{{apiKey}}"},
        tools=["t1"],
    )
    values = {"workspace": "acme", "region": "eu", "apiKey": "k-1", "unused": "ignored"}
    upstream = render("srv", values, stdio)
    assert upstream.command == ["srv", "--workspace", "acme", "--region=eu"]
    assert upstream.env == {"API_KEY": "k-1", "STATIC": "no-template", "BOTH": "acme:k-1"}
    assert upstream.tools == ("t1",)

    http = CatalogEntry(
        url="https://{{host}}/mcp?team={{team}}",
        headers={"Authorization": "Bearer {{token}}", "X-Team": "{{team}}"},
    )
    upstream = render("remote", {"host": "mcp.example.com", "team": 7, "token": "tok-9"}, http)
    assert upstream.url == "https://mcp.example.com/mcp?team=7"
    assert upstream.headers == {"Authorization": "Bearer tok-9", "X-Team": "7"}
    assert upstream.command is None


def test_render_does_not_expand_templates_inside_values() -> None:
    entry = CatalogEntry(command=["srv", "{{a}}", "{{b}}"])
    assert render("srv", {"a": "{{b}}", "b": "B"}, entry).command == ["srv", "{{b}}", "B"]


def test_required_fields_in_order_of_first_use_without_duplicates() -> None:
    entry = CatalogEntry(
        command=["srv", "{{second}}", "{{first}}"],
        env={"A": "{{first}}", "B": "{{ third }}"},
        tools=[],
    )
    assert entry.required_fields() == ["second", "first", "third"]
    http = CatalogEntry(url="https://{{host}}/mcp", headers={"Authorization": "Bearer {{token}}"})
    assert http.required_fields() == ["host", "token"]
    assert CatalogEntry(command=["plain"]).required_fields() == []


# --------------------------------------------------------------------------- validate_config


def test_valid_config_passes(builtin: dict[str, CatalogEntry]) -> None:
    validate_config(
        {
            "notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"},
            "githubOfficial": {"githubPersonalAccessToken": "${GITHUB_TOKEN}", "extra": 1},
        },
        builtin,
    )


def test_unknown_key_suggests_the_nearest_valid_key(builtin: dict[str, CatalogEntry]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"notoin": {"internalIntegrationToken": "x"}}, builtin)
    assert "unknown MCP server 'notoin' (did you mean 'notion'?)" in str(info.value)
    assert "githubOfficial" in info.value.hint and "notion" in info.value.hint


def test_unknown_key_without_any_near_match(builtin: dict[str, CatalogEntry]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"zzzzqqq": {}}, builtin)
    assert "unknown MCP server 'zzzzqqq'" in str(info.value)
    assert "did you mean" not in str(info.value)


def test_missing_required_fields_name_key_and_field(builtin: dict[str, CatalogEntry]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"notion": {}, "githubOfficial": {"githubPersonalAccessToken": ""}}, builtin)
    message = str(info.value)
    assert "server 'notion' is missing 'internalIntegrationToken'" in message
    assert "server 'githubOfficial' is missing 'githubPersonalAccessToken'" in message


def test_every_problem_is_named_in_one_error(builtin: dict[str, CatalogEntry]) -> None:
    config = {"githb": {}, "notion": {}, "githubOfficial": "ghp_should_not_show"}
    with pytest.raises(ConfigError) as info:
        validate_config(config, builtin)
    message = str(info.value)
    assert "unknown MCP server 'githb'" in message
    assert "server 'notion' is missing 'internalIntegrationToken'" in message
    assert "server 'githubOfficial' needs an object of settings, got str" in message
    assert "ghp_should_not_show" not in message


@pytest.mark.parametrize("config", [[], "notion", None, {}, 3, [{"notion": {}}]])
def test_non_object_or_empty_config_is_refused(builtin: dict[str, CatalogEntry], config: object) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(config, builtin)
    assert "must be a non-empty JSON object of server keys" in str(info.value)


def test_upstreams_validates_then_renders(builtin: dict[str, CatalogEntry]) -> None:
    servers = upstreams({"githubOfficial": {"githubPersonalAccessToken": "ghp_1"}}, builtin)
    assert [s.key for s in servers] == ["githubOfficial"]
    assert servers[0].env["GITHUB_PERSONAL_ACCESS_TOKEN"] == "ghp_1"
    with pytest.raises(ConfigError, match="did you mean 'githubOfficial'"):
        upstreams({"githubofficial": {"githubPersonalAccessToken": "ghp_1"}}, builtin)


def test_expected_tools(builtin: dict[str, CatalogEntry]) -> None:
    assert expected_tools(["notion", "githubOfficial", "not-in-catalog"], builtin) == {
        "notion": ["API-post-search"],
        "githubOfficial": ["create_issue"],
        "not-in-catalog": [],
    }


# --------------------------------------------------------------------------- extra catalog files


def test_extra_catalog_adds_and_overrides_entries(tmp_path: Path) -> None:
    extra = write_catalog(
        tmp_path / "local-catalog.json",
        {
            "notion": {"command": ["python", "-m", "fake_notion", "{{internalIntegrationToken}}"], "tools": ["search"]},
            "linear": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer {{apiKey}}"}},
        },
    )
    catalog = load_catalog(extra)
    assert catalog["notion"].command == ["python", "-m", "fake_notion", "{{internalIntegrationToken}}"]
    assert catalog["notion"].tools == ["search"]
    assert catalog["linear"].required_fields() == ["apiKey"]
    assert catalog["githubOfficial"] == load_catalog()["githubOfficial"]  # untouched entries stay
    validate_config({"linear": {"apiKey": "${LINEAR}"}}, catalog)
    assert load_catalog(str(extra)).keys() == catalog.keys()  # a str path works too


def test_missing_catalog_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)
    assert "LOCAL_MCP_CATALOG" in info.value.hint


def test_bad_json_catalog_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "broken.json", '{\n  "x": {"command": ["a"]},\n  oops\n}')
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    assert "not valid JSON" in str(info.value) and "line 3" in str(info.value)


def test_catalog_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "list.json", [{"command": ["a"]}])
    with pytest.raises(ConfigError, match="must hold a JSON object of server keys") as info:
        load_catalog(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"command": ["srv"], "url": "http://127.0.0.1:1/mcp"}, "exactly one of 'command'"),
        ({"description": "neither transport"}, "exactly one of 'command'"),
        ({"command": []}, "exactly one of 'command'"),
        ({"command": ["srv"], "comand": ["typo"]}, "comand"),
        ({"command": "srv --stdio"}, "command"),
        ("just-a-string", "entry"),
    ],
)
def test_invalid_catalog_entry_names_file_and_entry(tmp_path: Path, entry: object, why: str) -> None:
    path = write_catalog(tmp_path / "bad-entry.json", {"good": {"command": ["ok"]}, "badone": entry})
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    assert "entry 'badone' is invalid" in message
    assert why in message
    assert "\n" not in message


# --------------------------------------------------------------------------- Upstream holds secrets


def test_upstream_repr_hides_env_and_header_secrets() -> None:
    stdio = render(
        "githubOfficial",
        {"githubPersonalAccessToken": "ghp_secret_value_777"},
        load_catalog()["githubOfficial"],
    )
    http = render(
        "remote",
        {"token": "remote_secret_value_888"},
        CatalogEntry(url="https://mcp.example.com/{{token}}/mcp", headers={"Authorization": "Bearer {{token}}"}),
    )
    for upstream, secret in ((stdio, "ghp_secret_value_777"), (http, "remote_secret_value_888")):
        for shown in (repr(upstream), str(upstream), f"{upstream}", repr([upstream]), str({"u": upstream})):
            assert secret not in shown
        assert upstream.key in repr(upstream)
    assert "github-mcp-server" in repr(stdio)

"""The rehearsal stand-ins, checked against the real clients that will use them.

The MCP servers and the claude CLI are run for real (stdio subprocesses);
only the remote services are local stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp.shared.exceptions import MCPError

from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.model import (
    ModelScript,
    count_tool_results,
    model_app,
    resolve_tool_name,
    user_texts,
)
from agentbox.rehearsal.notion_api import notion_app
from agentbox.missions.notion_to_github import OUTPUT_SCHEMA
from agentbox.rehearsal.seed import (
    NOTION_SEARCH_DATABASE_FILTER_VALUE,
    default_notion_seed,
    echo_script,
    notion_to_github_script,
)
from agentbox.rehearsal.servers import BackgroundServer, free_loopback_host_for_port80

ROOT = Path(__file__).resolve().parents[1]
CLAUDE = ROOT / "node_modules" / ".bin" / "claude"
NOTION_MCP = ROOT / "node_modules" / ".bin" / "notion-mcp-server"
GITHUB_MCP = ROOT / ".venv" / "bin" / "github-mcp-server"

NOTION_TOKEN = "secret_rehearsal_notion"
GITHUB_TOKEN = "ghp_rehearsal_github"
SEEDED_DATABASES = {"Product Roadmap", "Bug Tracker", "Meeting Notes"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def notion() -> Iterator[BackgroundServer]:
    with BackgroundServer(notion_app(NOTION_TOKEN)) as server:
        yield server


@pytest.fixture
def github() -> Iterator[BackgroundServer]:
    app = github_app(GITHUB_TOKEN, repos={"acme/widgets"})
    with BackgroundServer(app, host=free_loopback_host_for_port80(), port=80) as server:
        yield server


@contextlib.contextmanager
def model_server(script: ModelScript) -> Iterator[BackgroundServer]:
    with BackgroundServer(model_app(script)) as server:
        yield server


def notion_mcp_transport(base_url: str) -> StdioTransport:
    env = {
        "PATH": os.environ["PATH"],
        "BASE_URL": base_url,
        "OPENAPI_MCP_HEADERS": json.dumps(
            {"Authorization": f"Bearer {NOTION_TOKEN}", "Notion-Version": "2022-06-28"}
        ),
    }
    return StdioTransport(str(NOTION_MCP), [], env=env, cwd=str(ROOT))


def github_mcp_transport(host: str) -> StdioTransport:
    env = {"PATH": os.environ["PATH"], "GITHUB_PERSONAL_ACCESS_TOKEN": GITHUB_TOKEN}
    return StdioTransport(str(GITHUB_MCP), ["stdio", "--gh-host", f"http://{host}"], env=env)


def result_text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def run_claude(
    prompt: str, model_url: str, home: Path, *extra_args: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run the real CLI headless against the model stand-in; parse stream-json."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    proc = subprocess.run(
        [str(CLAUDE), "-p", "--output-format", "stream-json", "--verbose", "--max-turns", "3", *extra_args],
        input=prompt,
        capture_output=True,
        text=True,
        env=env,
        cwd=str(home),
        timeout=timeout,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    return proc, events


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


TOOLS = [
    {"name": "Bash", "input_schema": {"type": "object"}},
    {"name": "mcp__gateway__notion__API-post-search", "input_schema": {"type": "object"}},
    {"name": "mcp__gateway__create_issue", "input_schema": {"type": "object"}},
]


def conversation(tool_results: int) -> dict[str, Any]:
    """A Messages API body with ``tool_results`` completed tool calls."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}, {"type": "text", "text": "do it"}]}
    ]
    for i in range(tool_results):
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "x", "input": {}}]}
        )
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "done"}]}
        )
    return {"model": "claude-test", "max_tokens": 100, "messages": messages, "tools": TOOLS}


# --------------------------------------------------------------------------- servers


def test_background_server_binds_a_real_port_and_stops() -> None:
    server = BackgroundServer(model_app(echo_script()))
    with server:
        assert server.port != 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/").status_code == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_free_loopback_host_for_port80_is_bindable() -> None:
    host = free_loopback_host_for_port80()
    assert host.startswith("127.0.0.") and 2 <= int(host.rsplit(".", 1)[1]) <= 254
    with BackgroundServer(github_app(GITHUB_TOKEN), host=host, port=80) as server:
        assert server.url == f"http://{host}:80"
        # Taken now, so the next pick must be a different address.
        assert free_loopback_host_for_port80() != host


# --------------------------------------------------------------------------- Notion


def test_notion_requires_the_token(notion: BackgroundServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(notion.url + "/v1/search", json={}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "object": "error",
            "status": 401,
            "code": "unauthorized",
            "message": "API token is invalid.",
        }


def test_notion_search_returns_seeded_databases(notion: BackgroundServer) -> None:
    headers = {"Authorization": f"Bearer {NOTION_TOKEN}", "Notion-Version": "2025-09-03"}
    for value in ("database", "data_source"):
        body = httpx.post(
            notion.url + "/v1/search",
            json={"query": "", "filter": {"property": "object", "value": value}},
            headers=headers,
        ).json()
        assert body["object"] == "list" and body["has_more"] is False and body["next_cursor"] is None
        assert body["type"] == "page_or_database"
        assert {r["object"] for r in body["results"]} == {"database"}
        assert {r["title"][0]["plain_text"] for r in body["results"]} == SEEDED_DATABASES

    bugs = httpx.post(notion.url + "/v1/search", json={"query": "BUG"}, headers=headers).json()
    assert [r["title"][0]["plain_text"] for r in bugs["results"]] == ["Bug Tracker"]

    first = httpx.post(notion.url + "/v1/search", json={"page_size": 1}, headers=headers).json()
    assert first["has_more"] is True and len(first["results"]) == 1
    second = httpx.post(
        notion.url + "/v1/search", json={"page_size": 1, "start_cursor": first["next_cursor"]}, headers=headers
    ).json()
    assert second["results"][0]["id"] == first["next_cursor"]
    assert notion.app.state.requests[0] == (
        "POST",
        "/v1/search",
        {"query": "", "filter": {"property": "object", "value": "database"}},
    )


def test_notion_objects_and_unknown_ids(notion: BackgroundServer) -> None:
    headers = {"Authorization": f"Bearer {NOTION_TOKEN}"}
    ws = notion.app.state.workspace
    db_id = next(i for i, db in ws.databases.items() if db["title"][0]["plain_text"] == "Bug Tracker")

    database = httpx.get(f"{notion.url}/v1/databases/{db_id}", headers=headers).json()
    assert database["id"] == db_id and "Status" in database["properties"]

    rows = httpx.post(f"{notion.url}/v1/databases/{db_id}/query", json={}, headers=headers).json()
    titles = [r["properties"]["Name"]["title"][0]["plain_text"] for r in rows["results"]]
    assert titles == [p.title for p in default_notion_seed().databases[1].pages]

    open_only = httpx.post(
        f"{notion.url}/v1/databases/{db_id}/query",
        json={"filter": {"property": "Status", "select": {"equals": "Open"}}},
        headers=headers,
    ).json()
    assert [r["properties"]["Status"]["select"]["name"] for r in open_only["results"]] == ["Open"]

    page = httpx.get(f"{notion.url}/v1/pages/{rows['results'][0]['id']}", headers=headers).json()
    assert page["object"] == "page" and page["parent"]["database_id"] == db_id
    blocks = httpx.get(f"{notion.url}/v1/blocks/{page['id']}/children", headers=headers).json()
    assert blocks["type"] == "block"
    assert "Safari" in blocks["results"][0]["paragraph"]["rich_text"][0]["plain_text"]

    me = httpx.get(f"{notion.url}/v1/users/me", headers=headers).json()
    assert me["object"] == "user" and me["type"] == "bot"

    for path in ("/v1/databases/nope", "/v1/pages/nope", "/v1/blocks/nope/children"):
        missing = httpx.get(notion.url + path, headers=headers)
        assert missing.status_code == 404
        assert missing.json()["code"] == "object_not_found"


def test_real_notion_mcp_server_searches_the_stand_in(notion: BackgroundServer) -> None:
    async def search() -> tuple[Any, Any]:
        async with Client(notion_mcp_transport(notion.url)) as client:
            tools = {tool.name: tool for tool in await client.list_tools()}
            result = await client.call_tool(
                "API-post-search",
                {"query": "", "filter": {"property": "object", "value": NOTION_SEARCH_DATABASE_FILTER_VALUE}},
            )
            return tools, result

    tools, result = asyncio.run(search())
    # The filter value our scripts use must be one the server's schema accepts.
    # (filter is anyOf [object, JSON-encoded string]; the object variant has the enum.)
    variants = tools["API-post-search"].input_schema["properties"]["filter"]["anyOf"]
    filter_object = next(v for v in variants if v["type"] == "object")
    assert NOTION_SEARCH_DATABASE_FILTER_VALUE in filter_object["properties"]["value"]["enum"]
    payload = json.loads(result_text(result))
    assert {r["title"][0]["plain_text"] for r in payload["results"]} == SEEDED_DATABASES
    method, path, body = notion.app.state.requests[-1]
    assert (method, path) == ("POST", "/v1/search")
    assert body["filter"]["value"] == NOTION_SEARCH_DATABASE_FILTER_VALUE


# --------------------------------------------------------------------------- GitHub


def test_github_stand_in_auth_repos_and_numbering(github: BackgroundServer) -> None:
    api = github.url + "/api/v3"
    unauthorized = httpx.post(f"{api}/repos/acme/widgets/issues", json={"title": "x"})
    assert unauthorized.status_code == 401 and unauthorized.json()["message"] == "Bad credentials"
    assert github.app.state.issues == []

    for scheme in ("Bearer", "token"):
        created = httpx.post(
            f"{api}/repos/acme/widgets/issues",
            json={"title": f"via {scheme}", "body": "b", "labels": ["bug"]},
            headers={"Authorization": f"{scheme} {GITHUB_TOKEN}"},
        )
        assert created.status_code == 201
    headers = {"Authorization": f"Bearer {GITHUB_TOKEN}"}
    assert [i["number"] for i in github.app.state.issues] == [1, 2]
    issue = httpx.get(f"{api}/repos/acme/widgets/issues/2", headers=headers).json()
    assert issue["title"] == "via token" and issue["labels"][0]["name"] == "bug"
    assert issue["html_url"] == "https://github.com/acme/widgets/issues/2"
    listed = httpx.get(f"{api}/repos/acme/widgets/issues", headers=headers).json()
    assert [i["number"] for i in listed] == [2, 1]

    assert httpx.get(f"{api}/repos/acme/widgets", headers=headers).json()["full_name"] == "acme/widgets"
    assert httpx.get(f"{api}/repos/acme/other", headers=headers).status_code == 404
    assert httpx.post(f"{api}/repos/acme/other/issues", json={"title": "x"}, headers=headers).status_code == 404
    assert httpx.post(f"{api}/repos/acme/widgets/issues", json={}, headers=headers).status_code == 422
    assert httpx.get(f"{api}/user", headers=headers).json()["login"] == "rehearsal-bot"

    probe = httpx.post(github.url + "/api/graphql", json={"query": "{ viewer { login } }"}, headers=headers)
    assert probe.status_code == 200 and probe.json()["data"] is None
    assert httpx.get(f"{api}/repos/acme/widgets/pulls", headers=headers).status_code == 404
    assert github.app.state.unmatched[-1][:2] == ("GET", "/api/v3/repos/acme/widgets/pulls")


def test_real_github_mcp_server_creates_an_issue(github: BackgroundServer) -> None:
    async def drive() -> tuple[Any, Any]:
        async with Client(github_mcp_transport(github.host)) as client:
            created = await client.call_tool(
                "create_issue",
                {"owner": "acme", "repo": "widgets", "title": "Login broken", "body": "Seen in Notion"},
            )
            # list_issues goes through GraphQL; the stand-in answers that query.
            listed = await client.call_tool("list_issues", {"owner": "acme", "repo": "widgets"})
            # A REST 404 surfaces as a JSON-RPC error from this server, not an isError result.
            with pytest.raises(MCPError, match="404 Not Found"):
                await client.call_tool("create_issue", {"owner": "acme", "repo": "nope", "title": "x"})
            return created, listed

    created, listed = asyncio.run(drive())
    issue = json.loads(result_text(created))
    assert issue["number"] == 1
    assert issue["html_url"] == "https://github.com/acme/widgets/issues/1"
    recorded = github.app.state.issues
    assert [(i["owner"], i["repo"], i["title"], i["body"]) for i in recorded] == [
        ("acme", "widgets", "Login broken", "Seen in Notion")
    ]
    assert "Login broken" in result_text(listed)
    assert github.app.state.unmatched == []
    assert ("POST", "/api/v3/repos/acme/widgets/issues") in [r[:2] for r in github.app.state.requests]


# --------------------------------------------------------------------------- model


def test_model_step_selection_counts_tool_results() -> None:
    script = ModelScript(
        [
            {"tool": "API-post-search", "input": {"query": ""}},
            {"tool": "create_issue", "input": {"title": "t"}},
            {"text": "all done"},
        ]
    )
    assert [count_tool_results(conversation(n)) for n in range(3)] == [0, 1, 2]
    with model_server(script) as server:
        replies = [httpx.post(server.url + "/v1/messages", json=conversation(n)).json() for n in range(4)]
        recorded = server.app.state.requests
    first, second, final, extra = replies
    assert first["stop_reason"] == "tool_use"
    assert first["content"][0]["name"] == "mcp__gateway__notion__API-post-search"
    assert second["content"][0] == {**second["content"][0], "name": "mcp__gateway__create_issue", "input": {"title": "t"}}
    assert final["stop_reason"] == "end_turn" and final["content"] == [{"type": "text", "text": "all done"}]
    assert extra["content"][0]["text"] == "all done"
    assert len(recorded) == 4
    assert user_texts(recorded[0]) == ["<system-reminder>ctx</system-reminder>", "do it"]


def test_model_tool_name_resolution() -> None:
    assert resolve_tool_name("create_issue", TOOLS) == "mcp__gateway__create_issue"
    assert resolve_tool_name("Bash", TOOLS) == "Bash"
    assert resolve_tool_name("issue", TOOLS) is None
    with model_server(ModelScript([{"tool": "delete_repo", "input": {}}, {"text": "x"}])) as server:
        reply = httpx.post(server.url + "/v1/messages", json=conversation(0)).json()
    assert reply["stop_reason"] == "end_turn"
    assert "delete_repo" in reply["content"][0]["text"]
    assert "mcp__gateway__create_issue" in reply["content"][0]["text"]


def test_model_streams_anthropic_sse() -> None:
    script = ModelScript([{"tool": "create_issue", "input": {"title": "Ünïcode", "labels": ["bug"]}}, {"text": "fin"}])
    with model_server(script) as server:
        response = httpx.post(
            server.url + "/v1/messages?beta=true", json={**conversation(0), "stream": True, "model": "claude-x"}
        )
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        text_events = parse_sse(
            httpx.post(server.url + "/v1/messages", json={**conversation(1), "stream": True}).text
        )
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["model"] == "claude-x" and start["content"] == [] and start["stop_reason"] is None
    block = next(d for n, d in events if n == "content_block_start")["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "mcp__gateway__create_issue" and block["input"] == {}
    partial = "".join(
        d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"
    )
    assert json.loads(partial) == {"title": "Ünïcode", "labels": ["bug"]}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    deltas = [d["delta"] for n, d in text_events if n == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": "fin"}]
    assert text_events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_model_side_requests_errors_and_render() -> None:
    script = ModelScript([{"error": {"status": 529, "message": "{{what}} overloaded"}}]).render(what="model")
    assert script[0].error is not None and script[0].error.message == "model overloaded"
    with model_server(script) as server:
        failed = httpx.post(server.url + "/v1/messages", json=conversation(0))
        assert failed.status_code == 529
        assert failed.json()["error"] == {"type": "overloaded_error", "message": "model overloaded"}

        side = httpx.post(server.url + "/v1/messages", json={**conversation(0), "tools": []}).json()
        assert side["content"][0]["type"] == "text" and side["stop_reason"] == "end_turn"
        titled = httpx.post(
            server.url + "/v1/messages",
            json={
                **conversation(0),
                "tools": [],
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}},
            },
        ).json()
        assert set(json.loads(titled["content"][0]["text"])) == {"title"}

        counted = httpx.post(server.url + "/v1/messages/count_tokens", json=conversation(0)).json()
        assert counted == {"input_tokens": 10}
        assert httpx.head(server.url + "/").status_code == 200

    same = ModelScript(steps=[{"text": "a"}, {"tool": "t"}])
    assert same == ModelScript.model_validate_json('[{"text": "a"}, {"tool": "t"}]')
    assert json.loads(same.model_dump_json(exclude_none=True)) == [{"text": "a"}, {"tool": "t"}]
    with pytest.raises(ValueError):
        ModelScript([{"tool": "t", "error": {"status": 500}}])

    rendered = notion_to_github_script("{{owner}}", "widgets", "{{title}}", "body").render(owner="acme", title="Bug")
    assert rendered[1].input == {"owner": "acme", "repo": "widgets", "title": "Bug", "body": "body"}


def test_model_hang_step_delays_the_answer() -> None:
    with model_server(ModelScript([{"hang_seconds": 1.0, "text": "late"}])) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/messages", json=conversation(0), timeout=0.3)
        reply = httpx.post(server.url + "/v1/messages", json=conversation(0), timeout=5).json()
    assert reply["content"][0]["text"] == "late"


# --------------------------------------------------------------------------- claude CLI


def test_real_claude_cli_talks_to_the_model_stand_in(tmp_path: Path) -> None:
    prompt = "Please greet the rehearsal audience"
    with model_server(ModelScript([{"text": "hello from the stand-in"}])) as server:
        proc, events = run_claude(prompt, server.url, tmp_path)
        requests = server.app.state.requests
    result = [e for e in events if e.get("type") == "result"]
    assert proc.returncode == 0, proc.stderr
    assert result and result[-1]["result"] == "hello from the stand-in" and not result[-1]["is_error"]
    main = [r for r in requests if r.get("tools")]
    assert main and prompt in user_texts(main[0])


def test_rehearsal_end_to_end_notion_to_github(tmp_path: Path, notion: BackgroundServer, github: BackgroundServer) -> None:
    """The real CLI drives both real MCP servers through the scripted model."""
    script = notion_to_github_script("acme", "widgets", "Fix Safari login", "Reported in the Bug Tracker")
    notion_cmd = notion_mcp_transport(notion.url)
    github_cmd = github_mcp_transport(github.host)
    config = {
        "mcpServers": {
            "notion": {"command": notion_cmd.command, "args": notion_cmd.args, "env": notion_cmd.env},
            "github": {"command": github_cmd.command, "args": [*github_cmd.args, "--toolsets", "issues"], "env": github_cmd.env},
        }
    }
    config_path = tmp_path / "mcp.json"
    config_path.write_text(json.dumps(config))
    with model_server(script) as server:
        proc, events = run_claude(
            "File the Safari bug from Notion on GitHub",
            server.url,
            tmp_path,
            "--mcp-config",
            str(config_path),
            "--strict-mcp-config",
            "--allowedTools",
            "mcp__notion__API-post-search,mcp__github__create_issue",
            "--json-schema",
            json.dumps(OUTPUT_SCHEMA),
            timeout=180,
        )
    result = [e for e in events if e.get("type") == "result"]
    assert proc.returncode == 0, proc.stderr
    assert result and not result[-1]["is_error"]
    assert [(i["owner"], i["repo"], i["title"]) for i in github.app.state.issues] == [
        ("acme", "widgets", "Fix Safari login")
    ]
    assert ("POST", "/v1/search") in [r[:2] for r in notion.app.state.requests]
    tool_results = [
        block
        for e in events
        if e.get("type") == "user"
        for block in e["message"]["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(tool_results) == 3 and not any(b.get("is_error") for b in tool_results)
    assert "Bug Tracker" in json.dumps(tool_results[0]["content"])
    assert "https://github.com/acme/widgets/issues/1" in json.dumps(tool_results[1]["content"])
    # the typed answer names the URL GitHub returned ({{result:create_issue.html_url}} in the script)
    assert result[-1]["structured_output"] == {"issue_url": "https://github.com/acme/widgets/issues/1",
                                               "notion_databases": ["Product Roadmap", "Bug Tracker", "Meeting Notes"]}

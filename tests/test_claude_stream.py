"""Claude Code command lines, the stream-json parser and the control protocol's messages.

The parser is fed a realistic transcript of the bidirectional stream-json mode (events, a permission request, noise)
split at every position and in random chunks; the command lines are parsed back with `shlex` and also run by a real
bash against a stand-in `claude` executable that records its argv, stdin and environment.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agentbox.claude import (
    GATEWAY_NAME,
    TOKEN_ENV,
    AgentRun,
    ClaudeOptions,
    InitEvent,
    PermissionRequest,
    ResultEvent,
    StreamParser,
    TextEvent,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
    mcp_add_command,
    mcp_get_command,
    mcp_get_status,
    permission_response,
    prompt_command,
    split_tool_name,
    user_message,
)

SESSION = "5f0c2a8e-1b7d-4c1e-9d5a-0a1b2c3d4e5f"
MODEL = "claude-sonnet-4-5-20250929"


def line(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False)


def assistant(*content: dict) -> dict:
    return {
        "type": "assistant",
        "message": {
            "id": "msg_01XyZ",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": list(content),
            "stop_reason": None,
            "usage": {"input_tokens": 12, "output_tokens": 34},
        },
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }


def user(*content: dict) -> dict:
    return {
        "type": "user",
        "message": {"role": "user", "content": list(content)},
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }


ISSUE_INPUT = {"owner": "acme", "repo": "roadmap", "title": "Ship the “gateway” ✔", "body": "From Notion:\n- item"}
ISSUE_OUTPUT = json.dumps({"number": 42, "html_url": "https://github.com/acme/roadmap/issues/42"})

LINES = [
    line(
        {
            "type": "system",
            "subtype": "init",
            "cwd": "/home/user",
            "session_id": SESSION,
            "tools": ["Task", "Bash", "Read", "mcp__gateway__create_issue", "mcp__gateway__API-post-search"],
            "mcp_servers": [{"name": "gateway", "status": "connected"}],
            "model": MODEL,
            "permissionMode": "default",
            "apiKeySource": "ANTHROPIC_API_KEY",
        }
    ),
    "Warning: the node version is old; some features may not work",  # noise on stdout
    line(assistant({"type": "thinking", "thinking": "Search Notion first.", "signature": "sig"})),
    line(assistant({"type": "tool_use", "id": "toolu_01Search", "name": "mcp__gateway__API-post-search", "input": {"query": "roadmap"}})),
    line(
        user(
            {
                "tool_use_id": "toolu_01Search",
                "type": "tool_result",
                "is_error": True,
                "content": [{"type": "text", "text": "Notion API error 401"}, {"type": "image", "source": {}}],
            }
        )
    ),
    "",
    line(
        assistant(
            {"type": "text", "text": "Notion failed; I will file the issue anyway — café ☕"},
            {"type": "tool_use", "id": "toolu_02Issue", "name": "mcp__gateway__create_issue", "input": ISSUE_INPUT},
        )
    ),
    line({"type": "control_request", "request_id": "req-1", "request": {
        "subtype": "can_use_tool", "tool_name": "mcp__gateway__create_issue", "display_name": "create_issue",
        "input": ISSUE_INPUT, "permission_suggestions": [], "tool_use_id": "toolu_02Issue"}}),
    line({"type": "control_request", "request_id": "req-2", "request": {"subtype": "hook_callback"}}),  # not ours
    line(user({"tool_use_id": "toolu_02Issue", "type": "tool_result", "content": [{"type": "text", "text": ISSUE_OUTPUT}]})),
    "[1, 2, 3]",  # JSON, but not an event: ignored, not noise
    line(assistant({"type": "tool_use", "id": "toolu_03Bash", "name": "Bash", "input": {"command": "rm -rf /tmp/x"}})),
    line(
        user(
            {
                "tool_use_id": "toolu_03Bash",
                "type": "tool_result",
                "is_error": True,
                "content": "Claude requested permissions to use Bash, but you haven't granted it yet.",
            }
        )
    )
    + "\r",  # a CRLF line ending
    line(assistant({"type": "tool_use", "id": "toolu_04Never", "name": "mcp__gateway__add_comment", "input": {}})),
    "{not json at all",
    line({"type": "system", "subtype": "compact_boundary", "session_id": SESSION}),  # unknown kind: no event
    line(assistant({"type": "text", "text": "Created issue #42: https://github.com/acme/roadmap/issues/42"})),
    line(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 18234,
            "duration_api_ms": 15000,
            "num_turns": 5,
            "result": "Created issue #42: https://github.com/acme/roadmap/issues/42",
            "session_id": SESSION,
            "total_cost_usd": 0.0421,
            "usage": {"input_tokens": 1000, "output_tokens": 200},
            "permission_denials": [
                {"tool_name": "Bash", "tool_use_id": "toolu_03Bash", "tool_input": {"command": "rm -rf /tmp/x"}}
            ],
            "structured_output": {"issue_url": "https://github.com/acme/roadmap/issues/42"},
        }
    ),
]
USAGE = UsageEvent("msg_01XyZ", MODEL, {"input_tokens": 12, "output_tokens": 34})
# The last line has no trailing newline: only close() can emit it.
TRANSCRIPT = "\n".join(LINES)

EXPECTED_EVENTS = [
    InitEvent(
        SESSION,
        MODEL,
        ["Task", "Bash", "Read", "mcp__gateway__create_issue", "mcp__gateway__API-post-search"],
        {"gateway": "connected"},
    ),
    USAGE,  # the thinking block: usage only
    USAGE,
    ToolCallEvent("toolu_01Search", "mcp__gateway__API-post-search", {"query": "roadmap"}),
    ToolResultEvent("toolu_01Search", True, "Notion API error 401"),
    USAGE,
    TextEvent("Notion failed; I will file the issue anyway — café ☕"),
    ToolCallEvent("toolu_02Issue", "mcp__gateway__create_issue", ISSUE_INPUT),
    PermissionRequest("req-1", "mcp__gateway__create_issue", ISSUE_INPUT, "toolu_02Issue"),
    ToolResultEvent("toolu_02Issue", False, ISSUE_OUTPUT),
    USAGE,
    ToolCallEvent("toolu_03Bash", "Bash", {"command": "rm -rf /tmp/x"}),
    ToolResultEvent("toolu_03Bash", True, "Claude requested permissions to use Bash, but you haven't granted it yet."),
    USAGE,
    ToolCallEvent("toolu_04Never", "mcp__gateway__add_comment", {}),
    USAGE,
    TextEvent("Created issue #42: https://github.com/acme/roadmap/issues/42"),
    ResultEvent(
        subtype="success",
        is_error=False,
        result="Created issue #42: https://github.com/acme/roadmap/issues/42",
        num_turns=5,
        total_cost_usd=0.0421,
        duration_ms=18234,
        permission_denials=[
            {"tool_name": "Bash", "tool_use_id": "toolu_03Bash", "tool_input": {"command": "rm -rf /tmp/x"}}
        ],
        session_id=SESSION,
        structured_output={"issue_url": "https://github.com/acme/roadmap/issues/42"},
    ),
]
EXPECTED_NOISE = ["Warning: the node version is old; some features may not work", "{not json at all"]


def parse_chunks(chunks: list[str]) -> tuple[list, list[str]]:
    parser = StreamParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    events += parser.close()
    return events, parser.noise


# --------------------------------------------------------------------------- the parser


def test_whole_transcript_gives_the_expected_events() -> None:
    events, noise = parse_chunks([TRANSCRIPT])
    assert events == EXPECTED_EVENTS
    assert noise == EXPECTED_NOISE


def test_last_line_without_newline_needs_close() -> None:
    parser = StreamParser()
    before_close = parser.feed(TRANSCRIPT)
    assert before_close == EXPECTED_EVENTS[:-1]
    assert parser.close() == [EXPECTED_EVENTS[-1]]
    assert parser.close() == []  # the buffer is emptied


def test_split_at_every_position_gives_identical_events() -> None:
    for cut in range(len(TRANSCRIPT) + 1):
        events, noise = parse_chunks([TRANSCRIPT[:cut], TRANSCRIPT[cut:]])
        assert events == EXPECTED_EVENTS, f"split at {cut}"
        assert noise == EXPECTED_NOISE, f"split at {cut}"


def test_random_small_chunks_give_identical_events() -> None:
    rng = random.Random(20240611)
    for _ in range(150):
        chunks, at = [], 0
        while at < len(TRANSCRIPT):
            size = rng.randint(0, 9)  # empty chunks included
            chunks.append(TRANSCRIPT[at : at + size])
            at += size
        events, noise = parse_chunks(chunks)
        assert events == EXPECTED_EVENTS
        assert noise == EXPECTED_NOISE


def test_one_character_at_a_time_gives_identical_events() -> None:
    events, noise = parse_chunks(list(TRANSCRIPT))
    assert events == EXPECTED_EVENTS
    assert noise == EXPECTED_NOISE


def test_noise_lines_are_cut_to_500_characters() -> None:
    parser = StreamParser()
    assert parser.feed("x" * 2000 + "\n") == []
    assert parser.noise == ["x" * 500]


# --------------------------------------------------------------------------- AgentRun


def test_agent_run_sums_up_the_transcript() -> None:
    run = AgentRun()
    parser = StreamParser()
    for chunk in (TRANSCRIPT[:700], TRANSCRIPT[700:]):
        for event in parser.feed(chunk):
            run.apply(event)
    for event in parser.close():
        run.apply(event)

    assert run.finished
    assert (run.subtype, run.is_error, run.num_turns) == ("success", False, 5)
    assert run.cost_usd == pytest.approx(0.0421)
    assert run.duration_ms == 18234
    assert run.session_id == SESSION and run.model == MODEL
    assert run.mcp_servers == {"gateway": "connected"}
    assert run.result == "Created issue #42: https://github.com/acme/roadmap/issues/42"
    assert run.permission_denials == ["Bash"]
    assert run.structured_output == {"issue_url": "https://github.com/acme/roadmap/issues/42"}

    calls = {c.id: c for c in run.tool_calls}
    assert [c.id for c in run.tool_calls] == ["toolu_01Search", "toolu_02Issue", "toolu_03Bash", "toolu_04Never"]
    search, issue, bash, never = (calls[i] for i in ("toolu_01Search", "toolu_02Issue", "toolu_03Bash", "toolu_04Never"))
    assert (search.server, search.tool, search.ok, search.output) == ("gateway", "API-post-search", False, "Notion API error 401")
    assert (issue.server, issue.tool, issue.ok, issue.input) == ("gateway", "create_issue", True, ISSUE_INPUT)
    assert json.loads(issue.output)["number"] == 42
    assert (bash.server, bash.tool, bash.ok) == ("", "Bash", False)
    assert (never.tool, never.ok, never.output) == ("add_comment", None, "")  # no result seen
    assert [c.id for c in run.successful_calls("create_issue")] == ["toolu_02Issue"]
    assert run.successful_calls("API-post-search") == []


def test_agent_run_error_result_and_runs_do_not_share_state() -> None:
    first, second = AgentRun(), AgentRun()
    first.apply(ToolCallEvent("t1", "mcp__gateway__echo", {"text": "x"}))
    first.apply(
        ResultEvent("error_max_turns", True, "", 12, 0.5, 1000, [{"tool_name": "Write"}, {"tool_use_id": "no-name"}], "s")
    )
    assert (first.subtype, first.is_error, first.finished) == ("error_max_turns", True, True)
    assert first.permission_denials == ["Write", "?"]
    assert second.tool_calls == [] and not second.finished


def test_tool_output_is_cut() -> None:
    run = AgentRun()
    run.apply(ToolCallEvent("t1", "mcp__gateway__echo", {}))
    run.apply(ToolResultEvent("t1", False, "y" * 100_000))
    assert run.tool_calls[0].ok is True
    assert 0 < len(run.tool_calls[0].output) < 100_000


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mcp__gateway__create_issue", ("gateway", "create_issue")),
        ("mcp__gateway__API-post-search", ("gateway", "API-post-search")),
        ("mcp__gateway__with__double", ("gateway", "with__double")),
        ("mcp__gateway", ("gateway", "")),
        ("Bash", ("", "Bash")),
        ("create_issue", ("", "create_issue")),
    ],
)
def test_split_tool_name(name: str, expected: tuple[str, str]) -> None:
    assert split_tool_name(name) == expected


# --------------------------------------------------------------------------- the Claude command line


def test_prompt_command_defaults_only_allow_the_gateway_and_ask_the_host_about_the_rest() -> None:
    argv = shlex.split(prompt_command(ClaudeOptions()))
    assert argv[0] == "claude" and "-p" not in argv and "<" not in argv  # the prompt comes on stdin, as JSON
    assert argv[argv.index("--input-format") + 1] == "stream-json"
    assert argv[argv.index("--output-format") + 1] == "stream-json"
    assert "--verbose" in argv
    assert argv[argv.index("--max-turns") + 1] == "12"
    assert argv[argv.index("--allowedTools") + 1] == f"mcp__{GATEWAY_NAME}"
    assert argv[argv.index("--permission-prompt-tool") + 1] == "stdio"
    assert "--dangerously-skip-permissions" not in argv
    assert not {"--model", "--max-budget-usd", "--json-schema"} & set(argv)


def test_prompt_command_with_every_option() -> None:
    schema = {"type": "object", "properties": {"url": {"type": "string", "description": "it's `$(x)`"}}}
    options = ClaudeOptions(
        max_turns=40,
        model="claude-opus-4-1",
        allowed_tools=("mcp__gateway", "Read"),
        bypass_permissions=True,
        append_system_prompt="Never touch 'main'; use $HOME && `echo` \"carefully\".",
        max_budget_usd=0.25,
        json_schema=schema,
    )
    argv = shlex.split(prompt_command(options))
    assert argv[argv.index("--max-turns") + 1] == "40"
    assert argv[argv.index("--model") + 1] == "claude-opus-4-1"
    assert argv[argv.index("--allowedTools") + 1] == "mcp__gateway,Read"
    assert "--dangerously-skip-permissions" in argv
    assert "--permission-prompt-tool" not in argv
    assert argv[argv.index("--append-system-prompt") + 1] == options.append_system_prompt
    assert argv[argv.index("--max-budget-usd") + 1] == "0.25"
    assert json.loads(argv[argv.index("--json-schema") + 1]) == schema


def test_control_protocol_lines() -> None:
    prompt = "Create an issue titled 'x'\n— ✔"
    message = json.loads(user_message(prompt))
    assert message["type"] == "user" and message["message"] == {"role": "user", "content": prompt}
    assert user_message(prompt).endswith("\n") and user_message(prompt).count("\n") == 1  # one JSON line
    allow = json.loads(permission_response("req-1", True, updated_input={"a": 1}))
    assert allow == {"type": "control_response", "response": {
        "subtype": "success", "request_id": "req-1", "response": {"behavior": "allow", "updatedInput": {"a": 1}}}}
    deny = json.loads(permission_response("req-2", False, message="No.\nReally"))["response"]["response"]
    assert deny == {"behavior": "deny", "message": "No.\nReally", "interrupt": False}


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    """A stand-in `claude` executable that records its argv, stdin and the gateway token it sees, as JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"print(json.dumps({{'argv': sys.argv[1:], 'stdin': sys.stdin.read(), 'token': os.environ.get({TOKEN_ENV!r})}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_in_bash(command: str, bin_dir: Path, cwd: Path, stdin: str = "", **env: str) -> dict:
    environment = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=30, input=stdin
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_command_line_reaches_claude_as_is_through_a_real_shell(fake_claude: Path, tmp_path: Path) -> None:
    options = ClaudeOptions(model="m; touch pwned3", append_system_prompt="$(touch pwned4)",
                            json_schema={"const": "`touch pwned5` $(touch pwned6)"})
    stdin = user_message("Create an issue titled 'x' && echo $HOME $(touch pwned)\n— with unicode ✔")
    seen = run_in_bash(prompt_command(options), fake_claude, tmp_path, stdin=stdin)
    assert seen["stdin"] == stdin
    assert seen["argv"] == shlex.split(prompt_command(options))[1:]
    assert not any(tmp_path.glob("pwned*"))


# --------------------------------------------------------------------------- claude mcp add / get


def test_mcp_add_command_registers_an_http_server_for_every_directory() -> None:
    argv = shlex.split(mcp_add_command("http://127.0.0.1:50005/mcp"))
    assert argv[:3] == ["claude", "mcp", "add"]
    assert argv[argv.index("--transport") + 1] == "http"
    assert argv[argv.index("--scope") + 1] == "user"
    assert argv[-2:] == ["--header", f"Authorization: Bearer ${TOKEN_ENV}"]
    assert argv[-4:-2] == [GATEWAY_NAME, "http://127.0.0.1:50005/mcp"]


def test_mcp_add_command_quotes_a_url_with_shell_metacharacters() -> None:
    url = "https://gw.example.com/mcp?a=1&b=$(touch pwned);c='d' `id` | tee x > y"
    argv = shlex.split(mcp_add_command(url, name="my gateway"))
    assert argv[-4:-2] == ["my gateway", url]


def test_mcp_add_command_token_comes_from_the_environment_in_a_real_shell(fake_claude: Path, tmp_path: Path) -> None:
    url = "http://127.0.0.1:50005/mcp?x=$(touch pwned)&y=`touch pwned2`"
    token = "gw-token-Very-Secret-123"
    command = mcp_add_command(url)
    assert token not in command
    seen = run_in_bash(command, fake_claude, tmp_path, **{TOKEN_ENV: token})
    assert seen["argv"] == [
        "mcp", "add", "--transport", "http", "--scope", "user", GATEWAY_NAME, url,
        "--header", f"Authorization: Bearer {token}",
    ]
    assert not any(tmp_path.glob("pwned*"))


def test_mcp_get_command() -> None:
    assert shlex.split(mcp_get_command()) == ["claude", "mcp", "get", GATEWAY_NAME]
    assert shlex.split(mcp_get_command("a b;c")) == ["claude", "mcp", "get", "a b;c"]


def mcp_get_output(status: str, token: str) -> str:
    """`claude mcp get gateway` as Claude Code 2.x prints it: the headers, token included, follow the status."""
    return (
        "gateway:\n"
        "  Scope: User config (available in all your projects)\n"
        f"  Status: {status}\n"
        "  Type: http\n"
        "  URL: http://127.0.0.1:50005/mcp\n"
        "  Headers:\n"
        f"    Authorization: Bearer {token}\n"
        "\n"
        "To remove this server, run: claude mcp remove gateway -s user\n"
    )


def test_mcp_get_status_connected() -> None:
    token = "gw-secret-token-abc"
    connected, reason = mcp_get_status(mcp_get_output("✔ Connected", token))
    assert connected is True
    assert reason == "✔ Connected"


@pytest.mark.parametrize(
    "status",
    [
        "✘ Failed to connect",
        "✘ Failed to connect — HTTP 401 Unauthorized",
        "✘ Failed to connect — Connected to proxy but upstream refused",
        "! Needs authentication",
    ],
)
def test_mcp_get_status_not_connected(status: str) -> None:
    token = "gw-secret-token-abc"
    connected, reason = mcp_get_status(mcp_get_output(status, token))
    assert connected is False
    assert reason == status
    assert token not in reason


def test_mcp_get_status_redacts_a_bearer_token_on_the_status_line() -> None:
    token = "gw-secret-token-xyz"
    text = mcp_get_output(f"✘ Failed to connect — server rejected Authorization: Bearer {token} (401)", token)
    connected, reason = mcp_get_status(text)
    assert connected is False
    assert token not in reason
    assert reason.startswith("✘ Failed to connect") and "Bearer ***" in reason


def test_mcp_get_status_without_status_line() -> None:
    token = "gw-secret-token-xyz"
    text = f'No MCP server found with name: "gateway".\nAuthorization: Bearer {token}\n'
    connected, reason = mcp_get_status(text)
    assert connected is False
    assert token not in reason and "no status line" in reason

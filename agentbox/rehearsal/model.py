"""A scripted stand-in for the Anthropic Messages API, so a rehearsal needs no model and no API key.

`claude` reaches it through `ANTHROPIC_BASE_URL` and gets the turns of a `ModelScript`: tool calls the real MCP
servers answer through the gateway, then a final text. It keeps no state: `claude` resends the whole conversation
every turn, so the number of `tool_result` blocks so far says which step is next, and a retried or parallel request
gets the same answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from agentbox.rehearsal.faults import FaultInjector, retry_headers
from agentbox.secrets import map_strings

# The answer to requests outside the scripted conversation, such as `claude`'s title generation (sent without tools).
SIDE_REQUEST_TEXT = "Rehearsal"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class ErrorSpec(BaseModel):
    """An HTTP error in Anthropic's shape, for rehearsing how `claude` and the flow handle API failures."""

    model_config = ConfigDict(extra="forbid")

    status: int = 500
    message: str = "Internal server error"
    type: str | None = Field(default=None, description="Anthropic error type; derived from status if unset")
    should_retry: bool | None = Field(
        default=None, description="If set, sent as the x-should-retry header the Anthropic SDK honours"
    )

    @property
    def error_type(self) -> str:
        return self.type or _ERROR_TYPES.get(self.status, "api_error")


class Step(BaseModel):
    """One model turn: a tool call, a text answer, an error, or a hang.

    `{"tool": name, "input": {...}}` may carry `text` said before the call; `hang_seconds` delays any step, and on
    its own makes a step that answers with a short text after the delay (for rehearsing timeouts). A string of the
    input written `{{result:<tool>.<field>}}` becomes that field of the tool's last result in the conversation.
    """

    model_config = ConfigDict(extra="forbid")

    tool: str | None = None
    input: dict[str, Any] | None = None
    text: str | None = None
    error: ErrorSpec | None = None
    hang_seconds: float | None = Field(default=None, ge=0)
    usage: dict[str, int] | None = Field(
        default=None, description="Token counts to report for this turn (input_tokens, output_tokens, ...) instead "
        "of the estimate from its size: a run's spend climbing as a test wants.")

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if self.error is not None and (self.tool is not None or self.text is not None):
            raise ValueError("an error step cannot also have tool or text")
        if self.tool is None and self.input:
            raise ValueError("input is only allowed with tool")
        if self.tool is None and self.text is None and self.error is None and self.hang_seconds is None:
            raise ValueError("a step needs one of tool, text, error or hang_seconds")
        return self


def _render(value: Any, values: dict[str, str]) -> Any:
    def fill(text: str) -> str:
        for name, replacement in values.items():
            text = text.replace("{{" + name + "}}", replacement)
        return text

    return map_strings(value, fill)


class ModelScript(RootModel[list[Step]]):
    """The ordered turns the stand-in plays; the last is the final answer.

    A plain JSON list, short to write by hand or keep in a file, e.g.
    `[{"tool": "create_issue", "input": {...}}, {"text": "done"}]`; `ModelScript([...])` and
    `ModelScript(steps=[...])` both work.
    """

    @model_validator(mode="before")
    @classmethod
    def _accept_steps_key(cls, value: Any) -> Any:
        """Also accept `{"steps": [...]}`, which is what `ModelScript(steps=[...])` passes."""
        if isinstance(value, dict) and set(value) == {"steps"}:
            return value["steps"]
        return value

    @property
    def steps(self) -> list[Step]:
        return self.root

    def __len__(self) -> int:
        return len(self.root)

    def __getitem__(self, index: int) -> Step:
        return self.root[index]

    def render(self, **values: Any) -> ModelScript:
        """Replace `{{name}}` in every string of the steps, so one script serves any repository or title."""
        data = self.model_dump(mode="json", exclude_none=True)
        return ModelScript.model_validate(_render(data, {k: str(v) for k, v in values.items()}))

    def step_for(self, tool_results: int) -> Step:
        """The step to play after `tool_results` tool results came back; past the end, the final text again, or a
        text that says the script ran out, so `claude` stops instead of calling tools forever."""
        if tool_results < len(self.root):
            return self.root[tool_results]
        last = self.root[-1] if self.root else None
        if last is not None and last.tool is None and last.error is None:
            return last
        return Step(text=f"(rehearsal script exhausted: {len(self.root)} steps, {tool_results} tool results)")


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def user_texts(request_body: dict[str, Any]) -> list[str]:
    """All text blocks of user messages, to check what `claude` was told (system reminders are separate blocks)."""
    texts: list[str] = []
    for message in request_body.get("messages") or []:
        if message.get("role") != "user":
            continue
        for block in _blocks(message):
            if isinstance(block, dict) and block.get("type") == "text":
                texts.append(str(block.get("text", "")))
    return texts


def count_tool_results(request_body: dict[str, Any]) -> int:
    """How many tool results the conversation holds so far: the index of the script's next step."""
    return sum(
        1
        for message in request_body.get("messages") or []
        if message.get("role") == "user"
        for block in _blocks(message)
        if isinstance(block, dict) and block.get("type") == "tool_result"
    )


_RESULT_REFERENCE = re.compile(r"^\{\{result:([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)\}\}$")


def latest_results(request_body: dict[str, Any]) -> dict[str, Any]:
    """The last result of each tool called so far, parsed as JSON where it is JSON, by the tool's name (without
    Claude Code's `mcp__<server>__` prefix)."""
    names: dict[str, str] = {}
    results: dict[str, Any] = {}
    for message in request_body.get("messages") or []:
        for block in _blocks(message):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                names[str(block.get("id"))] = str(block.get("name", "")).rsplit("__", 1)[-1]
            elif block.get("type") == "tool_result" and str(block.get("tool_use_id")) in names:
                content = block.get("content")
                text = content if isinstance(content, str) else "".join(
                    b.get("text", "") for b in content or [] if isinstance(b, dict))
                try:
                    results[names[str(block["tool_use_id"])]] = json.loads(text)
                except ValueError:
                    results[names[str(block["tool_use_id"])]] = text
    return results


def fill_results(value: Any, results: dict[str, Any]) -> Any:
    """Replace each string `{{result:<tool>.<field>}}` by that field of the tool's last result (a step can answer
    with what an earlier call returned, such as the URL of the issue it opened); unknown ones stay as written."""
    def fill(text: str) -> Any:
        match = _RESULT_REFERENCE.match(text)
        result = results.get(match.group(1)) if match else None
        return result.get(match.group(2), text) if isinstance(result, dict) else text

    return map_strings(value, fill)


def resolve_tool_name(wanted: str, tools: list[dict[str, Any]]) -> str | None:
    """The offered tool name for `wanted`: exact, or ending in `__<wanted>`.

    Claude Code names MCP tools `mcp__<server>__<tool>` and a gateway may add its own prefix, so scripts name tools by
    their original name.
    """
    names = [t.get("name") for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if wanted in names:
        return wanted
    for name in names:
        if name.endswith("__" + wanted):
            return name
    return None


def _estimate_tokens(value: Any) -> int:
    return max(1, len(json.dumps(value, ensure_ascii=False)) // 4)


def _message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def _plan(step: Step, tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Content blocks and stop_reason for a non-error step."""
    if step.tool is not None:
        name = resolve_tool_name(step.tool, tools)
        if name is None:
            offered = ", ".join(str(t.get("name")) for t in tools) or "(none)"
            return (
                [
                    {
                        "type": "text",
                        "text": f"Rehearsal stand-in: the script wants tool '{step.tool}' but it was "
                        f"not offered. Offered tools: {offered}",
                    }
                ],
                "end_turn",
            )
        blocks: list[dict[str, Any]] = []
        if step.text:
            blocks.append({"type": "text", "text": step.text})
        blocks.append(
            {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": name, "input": step.input or {}}
        )
        return blocks, "tool_use"
    if step.text is not None:
        return [{"type": "text", "text": step.text}], "end_turn"
    return [{"type": "text", "text": f"(rehearsal stand-in answered after hanging {step.hang_seconds}s)"}], "end_turn"


def _sample(schema: Any) -> Any:
    """A minimal value satisfying a simple JSON schema."""
    if not isinstance(schema, dict):
        return SIDE_REQUEST_TEXT
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {key: _sample(props.get(key, {})) for key in keys}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return SIDE_REQUEST_TEXT


def _side_request_text(body: dict[str, Any]) -> str:
    """Short answer for tool-less side requests, as JSON when a schema is asked for.

    Claude Code's title generation, for one, asks for `{"title": ...}` via `output_config.format` and would otherwise
    fail to parse the answer.
    """
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(_sample(fmt.get("schema")))
    return SIDE_REQUEST_TEXT


async def _hang(request: Request, seconds: float) -> bool:
    """Sleep `seconds` unless the client hangs up first; True if it did.

    Ending on disconnect keeps `stop()` quick after a client-side timeout.
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except asyncio.TimeoutError:
        return False
    return True


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _cut(events: Iterator[str]) -> Iterator[str]:
    """The first events of a stream (the message starts, no content block ends), then the connection drops."""
    for _, event in zip(range(4), events):
        yield event
    raise ConnectionResetError("stream cut by an injected fault")


def _stream_events(message: dict[str, Any]) -> Iterator[str]:
    """The event sequence Anthropic's streaming Messages API sends."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            )
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}},
            )
        else:
            yield _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
                },
            )
            partial = json.dumps(block["input"], ensure_ascii=False)
            middle = len(partial) // 2
            for chunk in (partial[:middle], partial[middle:]):
                yield _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": chunk},
                    },
                )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def model_app(script: ModelScript | dict[str, ModelScript]) -> Starlette:
    """The Messages API stand-in playing `script`, or, given `{text: script}`, the script whose text occurs in the
    conversation's user messages (one stand-in for many concurrent sessions, each with its own prompt).

    Faults armed on `app.state.faults` (a `FaultInjector`, see faults.py) hit the scripted conversation's requests;
    `match` looks in the user messages' text: an error (529 overloaded, 429 with retry-after, 500...), a slow first
    byte, or a stream cut off mid-message.

    What `claude` sent stays on the app for tests and reports: `app.state.requests` holds every `/v1/messages` body
    (parsed JSON), `app.state.count_tokens_requests` the token-count bodies and `app.state.unmatched` the
    `(method, path)` of requests no route knew.
    """
    requests_log: list[dict[str, Any]] = []
    count_tokens_log: list[dict[str, Any]] = []
    unmatched: list[tuple[str, str]] = []

    def error_response(spec: ErrorSpec, request_id: str, extra: dict[str, str] | None = None) -> JSONResponse:
        headers = {"request-id": request_id, **(extra or {})}
        if spec.should_retry is not None:
            headers["x-should-retry"] = "true" if spec.should_retry else "false"
        return JSONResponse(
            {"type": "error", "error": {"type": spec.error_type, "message": spec.message}, "request_id": request_id},
            status_code=spec.status,
            headers=headers,
        )

    async def read_json(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def messages(request: Request) -> Response:
        request_id = "req_" + uuid.uuid4().hex[:24]
        body = await read_json(request)
        if body is None:
            return error_response(ErrorSpec(status=400, message="Request body is not valid JSON."), request_id)
        requests_log.append(body)
        tools = body.get("tools") or []
        fault = None
        if not tools:
            step = Step(text=_side_request_text(body))
        else:
            said = "\n".join(user_texts(body))
            played = script if isinstance(script, ModelScript) else next(
                (s for key, s in script.items() if key in said), ModelScript([{"text": "(no script for this prompt)"}]))
            step = played.step_for(count_tool_results(body))
            fault = app.state.faults.draw(said, key=json.dumps(body.get("messages"), sort_keys=True))
        if fault is not None and fault.kind == "slow" and await _hang(request, fault.delay_seconds):
            return Response(status_code=499)
        if fault is not None and fault.kind == "error":
            return error_response(ErrorSpec(status=fault.status, message=fault.message,
                                            should_retry=fault.should_retry), request_id, retry_headers(fault))
        if step.hang_seconds and await _hang(request, step.hang_seconds):
            return Response(status_code=499)  # the client gave up; nobody reads this
        if step.error is not None:
            return error_response(step.error, request_id)
        if step.input:
            step = step.model_copy(update={"input": fill_results(step.input, latest_results(body))})
        content, stop_reason = _plan(step, tools)
        message = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-rehearsal"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _estimate_tokens(body.get("messages")),
                "output_tokens": _estimate_tokens(content),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                **(step.usage or {}),
            },
        }
        headers = {"request-id": request_id}
        if body.get("stream"):
            return StreamingResponse(
                _cut(_stream_events(message)) if fault is not None and fault.kind == "cut" else _stream_events(message),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        return JSONResponse(message, headers=headers)

    async def count_tokens(request: Request) -> Response:
        body = await read_json(request)
        count_tokens_log.append(body if body is not None else {})
        return JSONResponse({"input_tokens": 10})

    async def root(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def unknown(request: Request) -> Response:
        unmatched.append((request.method, request.url.path))
        return JSONResponse(
            {"type": "error", "error": {"type": "not_found_error", "message": f"Not found: {request.url.path}"}},
            status_code=404,
        )

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/{path:path}", unknown, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
        ]
    )
    app.state.script = script
    app.state.faults = FaultInjector()
    app.state.requests = requests_log
    app.state.count_tokens_requests = count_tokens_log
    app.state.unmatched = unmatched
    return app

"""What an MCP client sees of tests/servers/feature_server.py, feature by feature, as plain JSON-like data.

`observe(connect)` speaks to the server through one session, as a client would (the `mcp` SDK's own ClientSession,
with sampling, elicitation and roots callbacks, a logging callback and a message handler), and returns what each
feature answered. The feature suite compares what it returns directly and through the gateway: equal means the
gateway passed every feature through unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

NOTE = "feature://notes/today"
Connect = Callable[[], contextlib.AbstractAsyncContextManager]


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


@contextlib.asynccontextmanager
async def stdio(command: list[str], env: dict[str, str] | None = None) -> AsyncIterator[tuple]:
    async with stdio_client(StdioServerParameters(command=command[0], args=command[1:], env=env)) as streams:
        yield streams


@contextlib.asynccontextmanager
async def http(url: str, token: str | None = None) -> AsyncIterator[tuple]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            yield streams[0], streams[1]


class Client:
    """The client's side of the server-initiated requests, and every notification it receives."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, Any]] = []
        self.logs: list[dict] = []
        self.requests: list[dict] = []

    async def sampling(self, context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.requests.append({"sampling": dump(params)})
        return types.CreateMessageResult(role="assistant", model="stand-in-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text="hi"))

    async def elicitation(self, context, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.requests.append({"elicitation": dump(params)})
        return types.ElicitResult(action="accept", content={"colour": "green"})

    async def roots(self, context) -> types.ListRootsResult:
        self.requests.append({"roots": True})
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(dump(params))

    async def message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.notifications.append(("exception", type(message).__name__))
        else:
            self.notifications.append((message.method, dump(message.params) if message.params else None))

    def session(self, streams: tuple) -> ClientSession:
        return ClientSession(streams[0], streams[1], read_timeout_seconds=60, sampling_callback=self.sampling,
                             elicitation_callback=self.elicitation, list_roots_callback=self.roots,
                             logging_callback=self.logging, message_handler=self.message)


async def every_page(list_page: Callable, field: str) -> tuple[list, int]:
    """Every item of a paginated list, following cursors (and how many pages it took)."""
    items, cursor, pages = [], None, 0
    while True:
        result = await list_page(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        items += [dump(item) for item in getattr(result, field)]
        pages += 1
        cursor = result.next_cursor
        if not cursor or pages > 50:
            return items, pages


async def answer(request: Any) -> Any:
    """A request's result as data, or the error it answered with (a feature that fails is an answer too)."""
    try:
        result = await request
    except MCPError as exc:
        return {"error": exc.code, "message": str(exc)}
    return dump(result) if result is not None else None


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    with anyio.move_on_after(seconds):
        while not predicate():
            await anyio.sleep(0.02)
        return True
    return False


async def observe(connect: Connect) -> dict[str, Any]:
    """Every feature, as the client sees it."""
    client, seen = Client(), {}
    async with connect() as streams, client.session(streams) as session:
        init = await session.initialize()
        caps = init.capabilities
        seen["capabilities"] = {
            "tools.listChanged": bool(caps.tools and caps.tools.list_changed),
            "prompts.listChanged": bool(caps.prompts and caps.prompts.list_changed),
            "resources.subscribe": bool(caps.resources and caps.resources.subscribe),
            "resources.listChanged": bool(caps.resources and caps.resources.list_changed),
            "completions": caps.completions is not None,
            "logging": caps.logging is not None,
        }

        tools, _ = await every_page(session.list_tools, "tools")
        seen["tools"] = sorted(tools, key=lambda t: t["name"])
        seen["call lookup"] = await answer(session.call_tool("lookup", {"item": {"id": "item-2", "tags": ["red"]}}))
        seen["call fail"] = await answer(session.call_tool("fail", {}))

        seen["set level"] = await answer(session.set_logging_level("info"))
        progress: list = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append([value, total, message])

        seen["call count"] = await answer(session.call_tool("count", {"n": 4}, progress_callback=on_progress))
        await wait_for(lambda: len(client.logs) >= 3 and len(progress) >= 4, 2)
        seen["progress"], seen["logs"] = progress, client.logs

        with anyio.move_on_after(1.0):  # cancelling the call sends notifications/cancelled
            await session.call_tool("wait", {})
        await wait_for(lambda: False, 0.3)
        seen["cancelled"] = await answer(session.call_tool("cancelled", {}))

        seen["call ask_model"] = await answer(session.call_tool("ask_model", {}))
        seen["call ask_person"] = await answer(session.call_tool("ask_person", {}))
        seen["call roots"] = await answer(session.call_tool("roots", {}))
        seen["server requests"] = client.requests

        prompts, _ = await every_page(session.list_prompts, "prompts")
        seen["prompts"] = sorted(prompts, key=lambda p: p["name"])
        seen["get greet"] = await answer(session.get_prompt("greet", {"name": "Ada"}))
        seen["complete greet"] = await answer(session.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "Al"}))
        seen["complete greet formal"] = await answer(session.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "G"},
            context_arguments={"tone": "formal"}))

        resources, _ = await every_page(session.list_resources, "resources")
        seen["resources"] = sorted(resources, key=lambda r: r["uri"])
        templates, _ = await every_page(session.list_resource_templates, "resource_templates")
        seen["templates"] = sorted(templates, key=lambda t: t["uriTemplate"])
        seen["read"] = {r["uri"]: await answer(session.read_resource(r["uri"])) for r in seen["resources"]}
        seen["read template"] = await answer(session.read_resource("feature://items/item-10"))
        seen["complete item"] = await answer(session.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="feature://items/{id}"),
            {"name": "id", "value": "item-1"}))

        client.notifications.clear()
        seen["subscribe"] = await answer(session.subscribe_resource(NOTE))
        seen["call change"] = await answer(session.call_tool("change", {}))
        await wait_for(lambda: {"notifications/resources/updated", "notifications/tools/list_changed"}
                       <= {method for method, _ in client.notifications})
        seen["after change"] = sorted(map(json.dumps, client.notifications))
        tools, _ = await every_page(session.list_tools, "tools")
        seen["tools after change"] = sorted(t["name"] for t in tools)
        seen["call extra"] = await answer(session.call_tool("extra", {}))
        client.notifications.clear()
        seen["unsubscribe"] = await answer(session.unsubscribe_resource(NOTE))
        await session.call_tool("change", {})
        await wait_for(lambda: any(m == "notifications/resources/updated" for m, _ in client.notifications), 0.5)
        seen["after unsubscribed change"] = sorted({m for m, _ in client.notifications})
    return seen

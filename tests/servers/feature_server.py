"""An MCP server that uses every feature of the protocol, for the gateway's feature suite (tests/test_gateway_features.py).

Written on the `mcp` SDK's low-level server, so every answer is exactly what this file says (no framework rewrites a
schema or fills a default): tools whose input schema uses `$defs`/`$ref`, with an output schema, annotations, `_meta`
and structured content; paginated lists (tools, prompts, resources, templates); completions for a prompt's and a
template's arguments; subscriptions and `resources/updated`; logging at the level the client sets; progress;
cancellation; and the requests a server makes of its client (sampling, elicitation, roots).

With FEATURE_NO_TEMPLATES set it serves resources but no templates list (answering -32601), as some servers do.
`python feature_server.py` speaks stdio; `python feature_server.py --http PORT` serves Streamable HTTP at
`http://127.0.0.1:PORT/mcp`. One process keeps its state (subscriptions, the note's version, cancelled calls) for
every client, so a test can ask it afterwards what it saw.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server

PAGE = 2  # items per page of every list, so each list takes several pages
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
NOTE = "feature://notes/today"

LOOKUP_INPUT = {
    "type": "object",
    "$defs": {
        "Tag": {"type": "string", "enum": ["red", "green"]},
        "Item": {
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": "^item-[0-9]+$"},
                           "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}}},
            "required": ["id"],
            "additionalProperties": False,
        },
    },
    "properties": {"item": {"$ref": "#/$defs/Item"}, "depth": {"type": "integer", "minimum": 0, "default": 1}},
    "required": ["item"],
    "additionalProperties": False,
}
LOOKUP_OUTPUT = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "found": {"type": "boolean"}, "depth": {"type": "integer"}},
    "required": ["id", "found"],
}
OBJECT = {"type": "object", "properties": {}}

TOOLS = [
    types.Tool(name="lookup", title="Look up an item", description="Structured answer for an item.",
               input_schema=LOOKUP_INPUT, output_schema=LOOKUP_OUTPUT,
               annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
               _meta={"example.com/owner": "features"}),
    types.Tool(name="count", description="Counts to n with progress and log messages.",
               input_schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
                             "required": ["n"]}),
    types.Tool(name="wait", description="Waits until cancelled (at most 30 s).", input_schema=OBJECT),
    types.Tool(name="cancelled", description="How many calls of `wait` were cancelled.", input_schema=OBJECT),
    types.Tool(name="ask_model", description="Asks the client's model (sampling).", input_schema=OBJECT),
    types.Tool(name="ask_person", description="Asks the person (elicitation).", input_schema=OBJECT),
    types.Tool(name="roots", description="The client's roots.", input_schema=OBJECT),
    types.Tool(name="change", description="Changes the note and adds a tool.", input_schema=OBJECT,
               annotations=types.ToolAnnotations(destructive_hint=False)),
    types.Tool(name="fail", description="Always fails.", input_schema=OBJECT),
    types.Tool(name="die", description="Ends the server's process (a crash).", input_schema=OBJECT),
    types.Tool(name="repeat", description="Answers with its text (the latency benchmark's call).",
               input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
]
EXTRA_TOOL = types.Tool(name="extra", description="Added by `change`.", input_schema=OBJECT)

PROMPTS = [
    types.Prompt(name="greet", title="Greeting", description="Greets someone.",
                 arguments=[types.PromptArgument(name="name", description="Who", required=True),
                            types.PromptArgument(name="tone", required=False)]),
    types.Prompt(name="summarize", description="Summarizes a topic.",
                 arguments=[types.PromptArgument(name="topic", required=True)]),
    types.Prompt(name="plain", description="No arguments."),
]
NAMES = ["Ada", "Alan", "Alonzo", "Grace"]
ITEMS = ["item-1", "item-2", "item-10", "item-11"]

RESOURCES = [
    types.Resource(uri=NOTE, name="today", title="Today's note", mime_type="text/plain",
                   annotations=types.Annotations(audience=["user"], priority=0.5), _meta={"example.com/kind": "note"}),
    types.Resource(uri="feature://blob/logo", name="logo", mime_type="image/png", size=4),
    types.Resource(uri="feature://notes/archive", name="archive", mime_type="text/markdown"),
]
TEMPLATES = [
    types.ResourceTemplate(uri_template="feature://items/{id}", name="item", title="An item",
                           description="One item by id.", mime_type="application/json",
                           annotations=types.Annotations(priority=1.0)),
    types.ResourceTemplate(uri_template="feature://users/{user}/notes", name="user-notes", mime_type="text/plain"),
]


class State:
    def __init__(self) -> None:
        self.version = 1
        self.extra = False
        self.cancelled = 0
        self.subscribers: dict[str, dict[str, Any]] = {}  # uri -> connection -> its session
        self.levels: dict[str, str] = {}  # connection -> the log level it set


def connection(ctx) -> str:
    """Which client connection a request came on: its HTTP session, or the one stdio connection."""
    request = ctx.request
    return (request.headers.get("mcp-session-id") if request is not None else None) or "stdio"


STATE = State()


def page(items: list, cursor: str | None) -> tuple[list, str | None]:
    start = int(cursor or 0)
    rest = start + PAGE
    return items[start:rest], (str(rest) if rest < len(items) else None)


def text(value: str) -> list[types.TextContent]:
    return [types.TextContent(type="text", text=value)]


async def list_tools(ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    tools, cursor = page(TOOLS + ([EXTRA_TOOL] if STATE.extra else []), params and params.cursor)
    return types.ListToolsResult(tools=tools, next_cursor=cursor)


async def log(ctx, level: str, message: str) -> None:
    """A log message, sent only at or above the level this client set (`warning` until it sets one)."""
    if LEVELS.index(level) >= LEVELS.index(STATE.levels.get(connection(ctx), "warning")):
        await ctx.session.send_log_message(level, {"message": message}, logger="features",
                                           related_request_id=ctx.request_id)


async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    name, args = params.name, params.arguments or {}
    if name == "lookup":
        item = args["item"]
        found = {"id": item["id"], "found": item["id"] in ITEMS, "depth": args.get("depth", 1)}
        return types.CallToolResult(content=text(f"{item['id']}: {found['found']}"), structured_content=found,
                                    _meta={"example.com/trace": "t-1"})
    if name == "count":
        token = (ctx.meta or {}).get("progress_token")
        for i in range(1, args["n"] + 1):
            if token is not None:
                await ctx.session.send_progress_notification(token, i, total=args["n"], message=f"step {i}",
                                                             related_request_id=ctx.request_id)
            await log(ctx, LEVELS[(i - 1) % 4], f"counted {i}")
        return types.CallToolResult(content=text(f"counted to {args['n']}"))
    if name == "wait":
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            STATE.cancelled += 1
            raise
        return types.CallToolResult(content=text("waited 30 s"))
    if name == "cancelled":
        return types.CallToolResult(content=text(str(STATE.cancelled)))
    if name == "ask_model":
        answer = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text="Say hi"))],
            max_tokens=10, system_prompt="Be brief.", related_request_id=ctx.request_id)
        return types.CallToolResult(content=text(f"{answer.model}: {answer.content.text}"))
    if name == "ask_person":
        answer = await ctx.session.elicit_form(
            "Which colour?", {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]},
            related_request_id=ctx.request_id)
        return types.CallToolResult(content=text(f"{answer.action}: {answer.content}"))
    if name == "roots":
        roots = await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult)
        return types.CallToolResult(content=text(" ".join(f"{r.name}={r.uri}" for r in roots.roots)))
    if name == "change":
        STATE.version += 1
        STATE.extra = True
        for session in list(STATE.subscribers.get(NOTE, {}).values()):
            await session.send_resource_updated(NOTE)
        await ctx.session.send_tool_list_changed()
        return types.CallToolResult(content=text(f"note is at version {STATE.version}"))
    if name == "extra":
        return types.CallToolResult(content=text("extra called"))
    if name == "die":
        os._exit(3)
    if name == "repeat":
        return types.CallToolResult(content=text(args["text"]))
    if name == "fail":
        return types.CallToolResult(content=text("this tool always fails"), is_error=True)
    raise ValueError(f"unknown tool {name}")


async def list_prompts(ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    prompts, cursor = page(PROMPTS, params and params.cursor)
    return types.ListPromptsResult(prompts=prompts, next_cursor=cursor)


async def get_prompt(ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    if params.name == "greet":
        return types.GetPromptResult(description="A greeting", messages=[
            types.PromptMessage(role="user", content=types.TextContent(type="text", text=f"Greet {args['name']}")),
            types.PromptMessage(role="assistant", content=types.EmbeddedResource(
                type="resource", resource=types.TextResourceContents(uri=NOTE, mime_type="text/plain",
                                                                     text=f"note v{STATE.version}"))),
        ])
    if params.name == "summarize":
        return types.GetPromptResult(messages=[types.PromptMessage(
            role="user", content=types.TextContent(type="text", text=f"Summarize {args['topic']}"))])
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=types.TextContent(
        type="text", text="plain"))])


async def list_resources(ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    resources, cursor = page(RESOURCES, params and params.cursor)
    return types.ListResourcesResult(resources=resources, next_cursor=cursor)


async def list_templates(ctx, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    templates, cursor = page(TEMPLATES, params and params.cursor)
    return types.ListResourceTemplatesResult(resource_templates=templates, next_cursor=cursor)


async def read_resource(ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri == "feature://blob/logo":
        contents = [types.BlobResourceContents(uri=uri, mime_type="image/png", blob="iVBORw==")]
    elif uri.startswith("feature://items/"):
        contents = [types.TextResourceContents(uri=uri, mime_type="application/json",
                                               text='{"id": "%s"}' % uri.rsplit("/", 1)[1])]
    else:
        contents = [types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"{uri} v{STATE.version}",
                                               _meta={"example.com/version": STATE.version})]
    return types.ReadResourceResult(contents=contents)


async def subscribe(ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    STATE.subscribers.setdefault(str(params.uri), {})[connection(ctx)] = ctx.session
    return types.EmptyResult()


async def unsubscribe(ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    STATE.subscribers.get(str(params.uri), {}).pop(connection(ctx), None)
    return types.EmptyResult()


async def complete(ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    ref, argument = params.ref, params.argument
    if isinstance(ref, types.PromptReference) and ref.name == "greet" and argument.name == "name":
        choices = NAMES
    elif isinstance(ref, types.ResourceTemplateReference) and ref.uri == "feature://items/{id}" and argument.name == "id":
        choices = ITEMS
    else:
        choices = []
    known = (params.context.arguments or {}) if params.context else {}
    values = [c for c in choices if c.startswith(argument.value)]
    if known.get("tone") == "formal":
        values = [f"Dr. {v}" for v in values]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_level(ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    STATE.levels[connection(ctx)] = params.level
    return types.EmptyResult()


class FeatureServer(Server):
    """Declares list_changed for tools, prompts and resources, on every transport."""

    def create_initialization_options(self, notification_options=None, *args, **kwargs):
        options = notification_options or NotificationOptions(prompts_changed=True, resources_changed=True,
                                                              tools_changed=True)
        return super().create_initialization_options(options, *args, **kwargs)


def logged(handler):
    """With FEATURE_SERVER_LOG set, each request's method and its client's declared capabilities become one JSON
    line of that file: what a client (Claude Code) asks of a server it is given."""
    path = os.environ.get("FEATURE_SERVER_LOG")
    if not path:
        return handler

    async def log_and_handle(ctx, params):
        capabilities = ctx.session.client_capabilities
        line = {"method": ctx.method, "progress": (ctx.meta or {}).get("progress_token") is not None,
                "capabilities": capabilities.model_dump(mode="json", by_alias=True,
                                                                              exclude_none=True) if capabilities else None}
        with open(path, "a") as log_file:
            log_file.write(json.dumps(line) + "\n")
        return await handler(ctx, params)

    return log_and_handle


def build() -> Server:
    import warnings

    with warnings.catch_warnings():  # logging/setLevel is deprecated as of 2026-07-28, still current before
        warnings.simplefilter("ignore")
        handlers = dict(
            on_list_tools=list_tools, on_call_tool=call_tool, on_list_prompts=list_prompts,
            on_get_prompt=get_prompt, on_list_resources=list_resources, on_list_resource_templates=list_templates,
            on_read_resource=read_resource, on_subscribe_resource=subscribe, on_unsubscribe_resource=unsubscribe,
            on_completion=complete, on_set_logging_level=set_level,
        )
        if os.environ.get("FEATURE_NO_TEMPLATES"):  # resources without templates/list, as some servers are
            del handlers["on_list_resource_templates"]
        return FeatureServer("feature-server", version="1.0.0", instructions="A server with every MCP feature.",
                             **{name: logged(handler) for name, handler in handlers.items()})


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(port: int) -> None:
    import uvicorn

    app = build().streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]))
    else:
        anyio.run(serve_stdio)

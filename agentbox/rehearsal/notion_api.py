"""A local stand-in for https://api.notion.com, so a rehearsal reads a seeded workspace instead of a real one.

It speaks enough of the Notion REST API (shapes, auth, errors, pagination) for the official notion-mcp-server, pointed
at it with `BASE_URL=<stand-in url>`, to run offline. Objects are shaped for both Notion API versions the server may
use, 2022-06-28 (databases) and 2025-09-03 (data sources).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentbox.rehearsal.faults import Fault, retry_headers, with_faults
from agentbox.rehearsal.seed import NotionSeed, SeedDatabase, SeedPage, default_notion_seed, stable_id

_CREATED = "2025-01-06T09:30:00.000Z"
_EDITED = "2025-01-20T16:45:00.000Z"
_SELECT_COLORS = ["gray", "blue", "green", "yellow", "red", "purple", "orange", "pink", "brown"]


def rich_text(content: str) -> list[dict[str, Any]]:
    """Notion's rich text array for a plain string: what every title, description and paragraph holds."""
    return [
        {
            "type": "text",
            "text": {"content": content, "link": None},
            "annotations": {
                "bold": False,
                "italic": False,
                "strikethrough": False,
                "underline": False,
                "code": False,
                "color": "default",
            },
            "plain_text": content,
            "href": None,
        }
    ]


def _plain(rich: list[dict[str, Any]]) -> str:
    return "".join(part.get("plain_text", "") for part in rich)


def _notion_url(title: str, object_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")
    return f"https://www.notion.so/{slug}-{object_id.replace('-', '')}"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"object": "error", "status": status, "code": code, "message": message}, status_code=status)


def _not_found(object_id: str) -> JSONResponse:
    return _error(
        404,
        "object_not_found",
        f"Could not find object with ID: {object_id}. Make sure the relevant pages and "
        "databases are shared with your integration.",
    )


def _list(results: list[dict[str, Any]], next_cursor: str | None, kind: str) -> dict[str, Any]:
    return {
        "object": "list",
        "results": results,
        "next_cursor": next_cursor,
        "has_more": next_cursor is not None,
        "type": kind,
        kind: {},
        "request_id": stable_id("request", kind, str(len(results))),
    }


def _by_id(objects: dict[str, dict[str, Any]], object_id: str) -> JSONResponse:
    """The object with that id, or Notion's 404."""
    return JSONResponse(objects[object_id]) if object_id in objects else _not_found(object_id)


def _paged_list(items: list[dict[str, Any]], body: dict[str, Any]) -> JSONResponse:
    """One page of `items` as a Notion list object, honouring start_cursor and page_size."""
    paged = _paginate(items, body.get("start_cursor"), body.get("page_size"))
    if isinstance(paged, JSONResponse):
        return paged
    page, cursor = paged
    return JSONResponse(_list(page, cursor, "page_or_database"))


def _paginate(
    items: list[dict[str, Any]], start_cursor: str | None, page_size: Any
) -> tuple[list[dict[str, Any]], str | None] | JSONResponse:
    """Notion cursors are opaque; ours are the id of the first item of the next page."""
    try:
        size = 100 if page_size is None else int(page_size)
    except (TypeError, ValueError):
        return _error(400, "validation_error", "body.page_size should be a number.")
    if not 1 <= size <= 100:
        return _error(400, "validation_error", "body.page_size should be between 1 and 100.")
    start = 0
    if start_cursor:
        ids = [item["id"] for item in items]
        if start_cursor not in ids:
            return _error(400, "validation_error", "The start_cursor provided is invalid.")
        start = ids.index(start_cursor)
    page = items[start : start + size]
    following = items[start + size : start + size + 1]
    return page, (following[0]["id"] if following else None)


class _Workspace:
    """The seeded objects, rendered once into Notion's JSON shapes."""

    def __init__(self, seed: NotionSeed) -> None:
        self.bot_id = stable_id("bot", seed.workspace_name)
        self.user_ref = {"object": "user", "id": stable_id("user", "owner")}
        self.databases: dict[str, dict[str, Any]] = {}
        self.data_sources: dict[str, dict[str, Any]] = {}
        self.pages: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, list[dict[str, Any]]] = {}
        self.pages_of: dict[str, list[str]] = {}
        self.me = {
            "object": "user",
            "id": self.bot_id,
            "name": "Rehearsal Integration",
            "avatar_url": None,
            "type": "bot",
            "bot": {
                "owner": {"type": "workspace", "workspace": True},
                "workspace_name": seed.workspace_name,
            },
        }
        for db in seed.databases:
            self._add_database(db)

    def _properties_schema(self, db: SeedDatabase) -> dict[str, Any]:
        return {
            "Name": {"id": "title", "name": "Name", "type": "title", "description": "", "title": {}},
            "Status": {
                "id": "%3AStS",
                "name": "Status",
                "type": "select",
                "description": "",
                "select": {
                    "options": [
                        {
                            "id": stable_id("option", db.title, status),
                            "name": status,
                            "color": _SELECT_COLORS[i % len(_SELECT_COLORS)],
                            "description": None,
                        }
                        for i, status in enumerate(db.statuses)
                    ]
                },
            },
        }

    def _add_database(self, db: SeedDatabase) -> None:
        db_id = stable_id("database", db.title)
        ds_id = stable_id("data_source", db.title)
        schema = self._properties_schema(db)
        common = {
            "created_time": _CREATED,
            "last_edited_time": _EDITED,
            "created_by": self.user_ref,
            "last_edited_by": self.user_ref,
            "title": rich_text(db.title),
            "description": rich_text(db.description) if db.description else [],
            "icon": None,
            "cover": None,
            "archived": False,
            "in_trash": False,
            "is_inline": False,
            "public_url": None,
        }
        # Shaped for both API versions: 2022-06-28 readers use `properties`, 2025-09-03 readers follow `data_sources`.
        self.databases[db_id] = {
            "object": "database",
            "id": db_id,
            **common,
            "properties": schema,
            "parent": {"type": "workspace", "workspace": True},
            "url": _notion_url(db.title, db_id),
            "data_sources": [{"id": ds_id, "name": db.title}],
        }
        self.data_sources[ds_id] = {
            "object": "data_source",
            "id": ds_id,
            **common,
            "properties": schema,
            "parent": {"type": "database_id", "database_id": db_id},
            "database_parent": {"type": "workspace", "workspace": True},
            "url": _notion_url(db.title, db_id),
        }
        self.pages_of[db_id] = []
        for page in db.pages:
            self._add_page(db, db_id, ds_id, page)

    def _add_page(self, db: SeedDatabase, db_id: str, ds_id: str, page: SeedPage) -> None:
        page_id = stable_id("page", db.title, page.title)
        options = self.databases[db_id]["properties"]["Status"]["select"]["options"]
        option = next((o for o in options if o["name"] == page.status), None)
        self.pages[page_id] = {
            "object": "page",
            "id": page_id,
            "created_time": _CREATED,
            "last_edited_time": _EDITED,
            "created_by": self.user_ref,
            "last_edited_by": self.user_ref,
            "cover": None,
            "icon": None,
            "parent": {"type": "database_id", "database_id": db_id},
            "archived": False,
            "in_trash": False,
            "properties": {
                "Status": {
                    "id": "%3AStS",
                    "type": "select",
                    "select": None
                    if option is None
                    else {"id": option["id"], "name": option["name"], "color": option["color"]},
                },
                "Name": {"id": "title", "type": "title", "title": rich_text(page.title)},
            },
            "url": _notion_url(page.title, page_id),
            "public_url": None,
        }
        self.pages_of[db_id].append(page_id)
        self.blocks[page_id] = [
            {
                "object": "block",
                "id": stable_id("block", db.title, page.title, str(i)),
                "parent": {"type": "page_id", "page_id": page_id},
                "created_time": _CREATED,
                "last_edited_time": _EDITED,
                "created_by": self.user_ref,
                "last_edited_by": self.user_ref,
                "has_children": False,
                "archived": False,
                "in_trash": False,
                "type": "paragraph",
                "paragraph": {"rich_text": rich_text(text), "color": "default"},
            }
            for i, text in enumerate(page.content)
        ]

    def title_of(self, obj: dict[str, Any]) -> str:
        if obj["object"] in ("database", "data_source"):
            return _plain(obj["title"])
        return _plain(obj["properties"]["Name"]["title"])

    def database_for(self, object_id: str) -> str | None:
        """Map a database id or data source id to the database id."""
        if object_id in self.databases:
            return object_id
        if object_id in self.data_sources:
            return self.data_sources[object_id]["parent"]["database_id"]
        return None


def _matches(page: dict[str, Any], condition: dict[str, Any]) -> bool | None:
    """Evaluate a (small) subset of Notion's filter language; None = unsupported."""
    if "and" in condition:
        results = [_matches(page, c) for c in condition["and"]]
        return None if None in results else all(results)
    if "or" in condition:
        results = [_matches(page, c) for c in condition["or"]]
        return None if None in results else any(results)
    prop = page["properties"].get(condition.get("property", ""))
    if prop is None:
        return None
    if prop["type"] == "title":
        value = _plain(prop["title"]).lower()
        test = condition.get("title") or condition.get("rich_text") or {}
    else:
        value = (prop["select"] or {}).get("name", "").lower()
        test = condition.get("select") or condition.get("status") or {}
    if "equals" in test:
        return value == str(test["equals"]).lower()
    if "does_not_equal" in test:
        return value != str(test["does_not_equal"]).lower()
    if "contains" in test:
        return str(test["contains"]).lower() in value
    if "is_empty" in test:
        return value == ""
    if "is_not_empty" in test:
        return value != ""
    return None


def notion_app(token: str, seed: NotionSeed | None = None) -> Starlette:
    """The Notion API stand-in over `seed` (default: `default_notion_seed()`), accepting only `token`.

    `app.state.requests` collects `(method, path, json_body_or_None)` for every request, rejected ones included, so
    tests can see exactly what the MCP server sent.
    """
    ws = _Workspace(seed if seed is not None else default_notion_seed())
    requests_log: list[tuple[str, str, Any]] = []

    async def guarded(request: Request) -> tuple[Any, JSONResponse | None]:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                requests_log.append((request.method, request.url.path, raw.decode(errors="replace")))
                return None, _error(400, "invalid_json", "Error parsing JSON body.")
        requests_log.append((request.method, request.url.path, body))
        if request.headers.get("authorization") != f"Bearer {token}":
            return body, _error(401, "unauthorized", "API token is invalid.")
        return body, None

    def endpoint(handler):
        async def wrapped(request: Request) -> JSONResponse:
            body, failure = await guarded(request)
            if failure is not None:
                return failure
            return await handler(request, body if isinstance(body, dict) else {})

        return wrapped

    async def search(request: Request, body: dict[str, Any]) -> JSONResponse:
        query = str(body.get("query") or "").strip().lower()
        flt = body.get("filter")
        wanted: set[str] = {"page", "database"}
        if flt:
            value = flt.get("value") if isinstance(flt, dict) else None
            if (
                not isinstance(flt, dict)
                or flt.get("property") != "object"
                or value not in ("page", "database", "data_source")
            ):
                return _error(
                    400,
                    "validation_error",
                    'body.filter.value should be "page" or "data_source", and '
                    'body.filter.property should be "object".',
                )
            # What a 2022-06-28 client calls databases, 2025-09-03 calls data sources: both filters return the
            # database objects.
            wanted = {"page"} if value == "page" else {"database"}
        candidates: list[dict[str, Any]] = []
        if "database" in wanted:
            candidates.extend(ws.databases.values())
        if "page" in wanted:
            candidates.extend(ws.pages.values())
        results = [obj for obj in candidates if not query or query in ws.title_of(obj).lower()]
        sort = body.get("sort") or {}
        if sort.get("direction") == "ascending":
            results = list(reversed(results))
        return _paged_list(results, body)

    async def get_database(request: Request, body: dict[str, Any]) -> JSONResponse:
        return _by_id(ws.databases, request.path_params["id"])

    async def get_data_source(request: Request, body: dict[str, Any]) -> JSONResponse:
        ds_id = request.path_params["id"]
        if ds_id in ws.data_sources:
            return JSONResponse(ws.data_sources[ds_id])
        # Lenient on purpose: search hands out database ids, and an agent may pass one here; answer with that
        # database's (single) data source.
        db_id = ws.database_for(ds_id)
        if db_id is None:
            return _not_found(ds_id)
        return JSONResponse(ws.data_sources[ws.databases[db_id]["data_sources"][0]["id"]])

    async def query_rows(request: Request, body: dict[str, Any]) -> JSONResponse:
        object_id = request.path_params["id"]
        db_id = ws.database_for(object_id)
        if db_id is None:
            return _not_found(object_id)
        rows = [ws.pages[pid] for pid in ws.pages_of[db_id]]
        if body.get("filter"):
            verdicts = [_matches(row, body["filter"]) for row in rows]
            if None in verdicts:
                return _error(
                    400,
                    "validation_error",
                    "The rehearsal stand-in only supports title/select filters with "
                    "equals, does_not_equal, contains, is_empty, is_not_empty (and/or).",
                )
            rows = [row for row, keep in zip(rows, verdicts, strict=True) if keep]
        return _paged_list(rows, body)

    async def get_page(request: Request, body: dict[str, Any]) -> JSONResponse:
        return _by_id(ws.pages, request.path_params["id"])

    async def block_children(request: Request, body: dict[str, Any]) -> JSONResponse:
        block_id = request.path_params["id"]
        if block_id not in ws.blocks:
            known_blocks = {b["id"] for blocks in ws.blocks.values() for b in blocks}
            if block_id in known_blocks:
                return JSONResponse(_list([], None, "block"))
            return _not_found(block_id)
        paged = _paginate(
            ws.blocks[block_id],
            request.query_params.get("start_cursor"),
            request.query_params.get("page_size"),
        )
        if isinstance(paged, JSONResponse):
            return paged
        page, cursor = paged
        return JSONResponse(_list(page, cursor, "block"))

    async def users_me(request: Request, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(ws.me)

    async def unknown(request: Request, body: dict[str, Any]) -> JSONResponse:
        return _error(
            400,
            "invalid_request_url",
            f"Invalid request URL: the rehearsal stand-in does not implement "
            f"{request.method} {request.url.path}.",
        )

    routes = [
        Route("/v1/search", endpoint(search), methods=["POST"]),
        Route("/v1/databases/{id}", endpoint(get_database), methods=["GET"]),
        Route("/v1/databases/{id}/query", endpoint(query_rows), methods=["POST"]),
        Route("/v1/data_sources/{id}", endpoint(get_data_source), methods=["GET"]),
        Route("/v1/data_sources/{id}/query", endpoint(query_rows), methods=["POST"]),
        Route("/v1/pages/{id}", endpoint(get_page), methods=["GET"]),
        Route("/v1/blocks/{id}/children", endpoint(block_children), methods=["GET"]),
        Route("/v1/users/me", endpoint(users_me), methods=["GET"]),
        Route("/{path:path}", endpoint(unknown), methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.requests = requests_log
    app.state.workspace = ws
    return with_faults(app, notion_error)


_NOTION_CODES = {429: "rate_limited", 500: "internal_server_error", 502: "bad_gateway", 503: "service_unavailable",
                 504: "gateway_timeout"}


def notion_error(fault: Fault) -> tuple[dict[str, Any], dict[str, str]]:
    """An injected error as Notion answers it (429s carry Retry-After, as Notion's do)."""
    code = _NOTION_CODES.get(fault.status, "internal_server_error")
    return {"object": "error", "status": fault.status, "code": code, "message": fault.message}, retry_headers(fault)

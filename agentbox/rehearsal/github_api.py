"""A local stand-in for GitHub's API, answering what github-mcp-server calls, so a rehearsal files issues nowhere.

github-mcp-server takes `--gh-host http://127.0.0.X` for a GitHub Enterprise Server and calls `/api/v3/...` (REST) and
`/api/graphql` there, dropping any port: serve this app on port 80 of a free loopback address
(`servers.free_loopback_host_for_port80`). Seen with github-mcp-server 0.12.1: nothing at startup; `create_issue` is
one `POST /api/v3/repos/{owner}/{repo}/issues` of `{"title","body","labels","assignees"[,"type","milestone"]}`;
`get_issue`, `get_me` and `search_issues` are `GET .../issues/{n}`, `/api/v3/user` and `/api/v3/search/issues`;
`list_issues` is a GraphQL query on `repository.issues`.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import zlib
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentbox.rehearsal.faults import Fault, retry_headers, with_faults

_DOCS = "https://docs.github.com/rest"
_LABEL_COLORS = ["d73a4a", "a2eeef", "7057ff", "008672", "e4e669", "d876e3", "0075ca"]
# The exact selection github-mcp-server 0.12.1 sends for list_issues: githubv4 decodes strictly, so only a query
# asking for exactly these fields gets an answer.
_GRAPHQL_ISSUES_PREFIX = "repository(owner: $owner, name: $repo){issues("
_GRAPHQL_ISSUE_NODES = (
    "nodes{number,title,body,state,databaseId,author{login},createdAt,updatedAt,"
    "labels(first: 100){nodes{name,id,description}},comments{totalCount}}"
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num_id(*parts: str) -> int:
    """A positive numeric id, like GitHub's database ids, that is the same in every run for the same parts."""
    return zlib.crc32("/".join(parts).encode()) % 900_000_000 + 100_000_000


def _node_id(prefix: str, number: int) -> str:
    return f"{prefix}_kwDO{base64.b64encode(str(number).encode()).decode().rstrip('=')}"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _user(login: str) -> dict[str, Any]:
    uid = _num_id("user", login)
    return {
        "login": login,
        "id": uid,
        "node_id": _node_id("U", uid),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "gravatar_id": "",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"https://github.com/{login}",
        "type": "User",
        "site_admin": False,
    }


def _not_found() -> JSONResponse:
    return JSONResponse({"message": "Not Found", "documentation_url": _DOCS, "status": "404"}, status_code=404)


def github_app(token: str, repos: set[str] | None = None, login: str = "rehearsal-bot") -> Starlette:
    """The GitHub stand-in: it accepts only `token`, and `repos` limits which `owner/repo` exist (None: all do).

    What it got stays on the app for tests and the flow: `app.state.issues` (the created issues, each with `owner` and
    `repo` keys added), `app.state.requests` (`(method, path_with_query, json_or_None)`) and `app.state.unmatched`
    (requests no route knew — what a newer github-mcp-server would need).
    """
    issues: list[dict[str, Any]] = []
    requests_log: list[tuple[str, str, Any]] = []
    unmatched: list[tuple[str, str, Any]] = []
    counters: dict[str, itertools.count] = {}
    known = None if repos is None else {r.lower() for r in repos}
    me = _user(login)

    def repo_exists(owner: str, repo: str) -> bool:
        return known is None or f"{owner}/{repo}".lower() in known

    def api_base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/api/v3"

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header in (f"Bearer {token}", f"token {token}")

    def endpoint(handler, *, graphql: bool = False):
        async def wrapped(request: Request) -> JSONResponse:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            requests_log.append((request.method, path, body))
            if not authorized(request):
                return JSONResponse(
                    {
                        "message": "Bad credentials",
                        "documentation_url": "https://docs.github.com/graphql" if graphql else _DOCS,
                        "status": "401",
                    },
                    status_code=401,
                )
            if isinstance(body, str):
                return JSONResponse(
                    {"message": "Problems parsing JSON", "documentation_url": _DOCS, "status": "400"},
                    status_code=400,
                )
            return await handler(request, body if isinstance(body, dict) else {})

        return wrapped

    def repo_json(request: Request, owner: str, repo: str) -> dict[str, Any]:
        rid = _num_id("repo", owner.lower(), repo.lower())
        api = api_base(request)
        open_count = sum(1 for i in issues if (i["owner"], i["repo"]) == (owner, repo) and i["state"] == "open")
        return {
            "id": rid,
            "node_id": _node_id("R", rid),
            "name": repo,
            "full_name": f"{owner}/{repo}",
            "private": False,
            "owner": _user(owner),
            "html_url": f"https://github.com/{owner}/{repo}",
            "description": None,
            "fork": False,
            "url": f"{api}/repos/{owner}/{repo}",
            "issues_url": f"{api}/repos/{owner}/{repo}/issues{{/number}}",
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": _now(),
            "pushed_at": _now(),
            "default_branch": "main",
            "visibility": "public",
            "has_issues": True,
            "archived": False,
            "disabled": False,
            "open_issues_count": open_count,
            "permissions": {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True},
        }

    async def create_issue(request: Request, body: dict[str, Any]) -> JSONResponse:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        if not repo_exists(owner, repo):
            return _not_found()
        title = body.get("title")
        if not isinstance(title, (str, int)) or str(title) == "":
            return JSONResponse(
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}],
                    "documentation_url": "https://docs.github.com/rest/issues/issues#create-an-issue",
                    "status": "422",
                },
                status_code=422,
            )
        key = f"{owner}/{repo}".lower()
        number = next(counters.setdefault(key, itertools.count(1)))
        iid = _num_id("issue", key, str(number))
        api = f"{api_base(request)}/repos/{owner}/{repo}"
        now = _now()
        labels = [
            {
                "id": _num_id("label", key, name),
                "node_id": _node_id("LA", _num_id("label", key, name)),
                "url": f"{api}/labels/{name}",
                "name": name,
                "color": _LABEL_COLORS[_num_id(name) % len(_LABEL_COLORS)],
                "default": False,
                "description": None,
            }
            for name in (body.get("labels") or [])
            if isinstance(name, str)
        ]
        issue: dict[str, Any] = {
            "url": f"{api}/issues/{number}",
            "repository_url": api,
            "labels_url": f"{api}/issues/{number}/labels{{/name}}",
            "comments_url": f"{api}/issues/{number}/comments",
            "events_url": f"{api}/issues/{number}/events",
            "html_url": f"https://github.com/{owner}/{repo}/issues/{number}",
            "id": iid,
            "node_id": _node_id("I", iid),
            "number": number,
            "title": str(title),
            "user": me,
            "labels": labels,
            "state": "open",
            "locked": False,
            "assignee": _user(body["assignees"][0]) if body.get("assignees") else None,
            "assignees": [_user(a) for a in body.get("assignees") or [] if isinstance(a, str)],
            "milestone": None
            if body.get("milestone") is None
            else {"number": body["milestone"], "title": f"Milestone {body['milestone']}", "state": "open"},
            "comments": 0,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "author_association": "OWNER",
            "active_lock_reason": None,
            "body": body.get("body"),
            "state_reason": None,
        }
        if body.get("type"):
            issue["type"] = {"id": _num_id("type", str(body["type"])), "name": str(body["type"])}
        issues.append({**issue, "owner": owner, "repo": repo})
        return JSONResponse(issue, status_code=201)

    def public(issue: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in issue.items() if k not in ("owner", "repo")}

    def issues_of(owner: str, repo: str) -> list[dict[str, Any]]:
        return [i for i in issues if (i["owner"].lower(), i["repo"].lower()) == (owner.lower(), repo.lower())]

    async def list_issues(request: Request, body: dict[str, Any]) -> JSONResponse:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        if not repo_exists(owner, repo):
            return _not_found()
        params = request.query_params
        state = params.get("state", "open")
        wanted_labels = {l for l in params.get("labels", "").split(",") if l}
        found = [
            i
            for i in issues_of(owner, repo)
            if (state == "all" or i["state"] == state)
            and wanted_labels <= {l["name"] for l in i["labels"]}
        ]
        found.sort(key=lambda i: i["number"], reverse=params.get("direction", "desc") == "desc")
        per_page = max(1, min(100, _int(params.get("per_page"), 30)))
        page = max(1, _int(params.get("page"), 1))
        return JSONResponse([public(i) for i in found[(page - 1) * per_page : page * per_page]])

    async def get_issue(request: Request, body: dict[str, Any]) -> JSONResponse:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        number = request.path_params["number"]
        for issue in issues_of(owner, repo):
            if issue["number"] == number:
                return JSONResponse(public(issue))
        return _not_found()

    async def get_repo(request: Request, body: dict[str, Any]) -> JSONResponse:
        owner, repo = request.path_params["owner"], request.path_params["repo"]
        if not repo_exists(owner, repo):
            return _not_found()
        return JSONResponse(repo_json(request, owner, repo))

    async def get_user(request: Request, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(
            {
                **me,
                "name": "Rehearsal Bot",
                "company": None,
                "blog": "",
                "location": None,
                "email": None,
                "bio": "Stand-in user for rehearsal runs",
                "public_repos": 0,
                "followers": 0,
                "following": 0,
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
            }
        )

    async def search_issues(request: Request, body: dict[str, Any]) -> JSONResponse:
        """Understands the `repo:`, `is:`/`state:` and `label:` qualifiers and free words (all must match)."""
        q = request.query_params.get("q", "")
        words, repo_filter, state, labels, kind = [], None, None, set(), "issue"
        for term in re.findall(r'"[^"]*"|\S+', q):
            term = term.strip('"')
            key, _, value = term.partition(":")
            if value and key == "repo":
                repo_filter = value.lower()
            elif value and key in ("is", "state") and value in ("open", "closed"):
                state = value
            elif value and key == "is" and value in ("issue", "pr", "pull-request"):
                kind = value
            elif value and key == "label":
                labels.add(value)
            elif value and key in ("in", "type", "sort", "author", "user", "org"):
                continue
            else:
                words.append(term.lower())
        found = []
        if kind == "issue":
            for i in issues:
                if repo_filter and f"{i['owner']}/{i['repo']}".lower() != repo_filter:
                    continue
                if state and i["state"] != state:
                    continue
                if not labels <= {l["name"] for l in i["labels"]}:
                    continue
                text = f"{i['title']}\n{i['body'] or ''}".lower()
                if all(w in text for w in words):
                    found.append(public(i))
        return JSONResponse({"total_count": len(found), "incomplete_results": False, "items": found})

    async def graphql(request: Request, body: dict[str, Any]) -> JSONResponse:
        query = str(body.get("query", ""))
        variables = body.get("variables") or {}
        if _GRAPHQL_ISSUES_PREFIX in query and _GRAPHQL_ISSUE_NODES in query:
            return JSONResponse(graphql_issues(variables))
        return JSONResponse({"data": None, "errors": [{"message": "not supported by the rehearsal stand-in"}]})

    def graphql_issues(v: dict[str, Any]) -> dict[str, Any]:
        owner, repo = str(v.get("owner", "")), str(v.get("repo", ""))
        if not repo_exists(owner, repo):
            return {
                "data": {"repository": None},
                "errors": [
                    {
                        "type": "NOT_FOUND",
                        "path": ["repository"],
                        "locations": [{"line": 1, "column": 1}],
                        "message": f"Could not resolve to a Repository with the name '{owner}/{repo}'.",
                    }
                ],
            }
        states = {s.lower() for s in v.get("states") or ["OPEN"]}
        labels = set(v.get("labels") or [])
        since = v.get("since")
        found = [
            i
            for i in issues_of(owner, repo)
            if i["state"] in states
            and labels <= {l["name"] for l in i["labels"]}
            and (not since or i["updated_at"] >= since)
        ]
        found.sort(key=lambda i: i["number"], reverse=v.get("direction", "DESC") == "DESC")
        start = int(base64.b64decode(v["after"]).decode().split(":")[1]) + 1 if v.get("after") else 0
        first = int(v.get("first") or 30)
        page = found[start : start + first]

        def cursor(index: int) -> str:
            return base64.b64encode(f"cursor:{index}".encode()).decode()

        return {
            "data": {
                "repository": {
                    "issues": {
                        "nodes": [
                            {
                                "number": i["number"],
                                "title": i["title"],
                                "body": i["body"] or "",
                                "state": i["state"].upper(),
                                "databaseId": i["id"],
                                "author": {"login": i["user"]["login"]},
                                "createdAt": i["created_at"],
                                "updatedAt": i["updated_at"],
                                "labels": {
                                    "nodes": [
                                        {"name": l["name"], "id": l["node_id"], "description": l["description"] or ""}
                                        for l in i["labels"]
                                    ]
                                },
                                "comments": {"totalCount": i["comments"]},
                            }
                            for i in page
                        ],
                        "pageInfo": {
                            "hasNextPage": start + first < len(found),
                            "hasPreviousPage": start > 0,
                            "startCursor": cursor(start) if page else None,
                            "endCursor": cursor(start + len(page) - 1) if page else None,
                        },
                        "totalCount": len(found),
                    }
                }
            }
        }

    async def unknown(request: Request, body: dict[str, Any]) -> JSONResponse:
        unmatched.append(requests_log[-1])
        return _not_found()

    repo_path = "/api/v3/repos/{owner}/{repo}"
    routes = [
        Route(f"{repo_path}/issues", endpoint(create_issue), methods=["POST"]),
        Route(f"{repo_path}/issues", endpoint(list_issues), methods=["GET"]),
        Route(f"{repo_path}/issues/{{number:int}}", endpoint(get_issue), methods=["GET"]),
        Route(repo_path, endpoint(get_repo), methods=["GET"]),
        Route("/api/v3/user", endpoint(get_user), methods=["GET"]),
        Route("/api/v3/search/issues", endpoint(search_issues), methods=["GET"]),
        Route("/api/graphql", endpoint(graphql, graphql=True), methods=["POST"]),
        Route("/{path:path}", endpoint(unknown), methods=["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"]),
    ]
    app = Starlette(routes=routes)
    app.state.issues = issues
    app.state.requests = requests_log
    app.state.unmatched = unmatched
    return with_faults(app, github_error)


def github_error(fault: Fault) -> tuple[dict[str, Any], dict[str, str]]:
    """An injected error as GitHub answers it: a 429 (or 403) is a rate limit, with GitHub's rate-limit headers."""
    headers = retry_headers(fault)
    if fault.status in (403, 429):
        reset = int(datetime.now(timezone.utc).timestamp() + (fault.retry_after or 60))
        headers.update({"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-used": "5000",
                        "x-ratelimit-reset": str(reset), "x-ratelimit-resource": "core"})
    message = "API rate limit exceeded" if fault.status in (403, 429) else fault.message
    return {"message": message, "documentation_url": _DOCS, "status": str(fault.status)}, headers

"""The stand-ins' injected faults, at the wire: each remote edge fails in its own service's shape (Anthropic's 529 and
429 with retry-after, a stream cut mid-message; Notion's and GitHub's 5xx and rate limits with their headers; slow
answers), hits only the requests it aims at, and decides by seed and request, never by arrival order."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agentbox.rehearsal.faults import FaultInjector
from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.model import ModelScript, model_app
from agentbox.rehearsal.notion_api import notion_app
from agentbox.rehearsal.servers import BackgroundServer, free_loopback_host_for_port80
from tests.test_rehearsal_standins import conversation

NOTION, GITHUB = "notion-test-token", "github-test-token"


def test_rates_hit_the_same_requests_whatever_order_they_come_in():
    keys = [f"session-{n}" for n in range(200)]
    first, second = FaultInjector([{"rate": 0.25}], seed=7), FaultInjector([{"rate": 0.25}], seed=7)
    hit_first = {k for k in keys if first.draw(k)}
    hit_second = {k for k in reversed(keys) if second.draw(k)}
    assert hit_first == hit_second and 20 < len(hit_first) < 80  # about a quarter, the same quarter
    assert {k for k in keys if FaultInjector([{"rate": 0.25}], seed=8).draw(k)} != hit_first  # the seed decides
    retried = FaultInjector([{"rate": 0.5}], seed=7)
    assert len({bool(retried.draw("same request")) for _ in range(20)}) == 2  # a retry gets a new throw


def test_count_and_match_aim_a_fault():
    faults = FaultInjector([{"status": 500, "count": 2, "match": "octo/a"}])
    hits = [faults.draw(text) is not None for text in ("octo/b", "octo/a", "octo/a", "octo/a")]
    assert hits == [False, True, True, False]
    assert [f["target"] for f in faults.fired] == ["octo/a", "octo/a"]


def test_the_model_answers_overloaded_once_then_plays_on():
    app = model_app(ModelScript([{"text": "done"}]))
    app.state.faults = FaultInjector([{"status": 529, "count": 1}, {"status": 429, "match": "another session"}])
    with BackgroundServer(app) as server:
        first = httpx.post(server.url + "/v1/messages", json=conversation(0))
        second = httpx.post(server.url + "/v1/messages", json=conversation(0))
    assert first.status_code == 529 and first.json()["error"]["type"] == "overloaded_error"
    assert second.status_code == 200 and second.json()["content"][0]["text"] == "done"


def test_the_model_rate_limit_carries_retry_after():
    app = model_app(ModelScript([{"text": "done"}]))
    app.state.faults = FaultInjector([{"status": 429, "retry_after": 2, "should_retry": True}])
    with BackgroundServer(app) as server:
        answer = httpx.post(server.url + "/v1/messages", json=conversation(0))
    assert answer.status_code == 429 and answer.json()["error"]["type"] == "rate_limit_error"
    assert (answer.headers["retry-after"], answer.headers["x-should-retry"]) == ("2", "true")


def test_the_model_stream_is_cut_mid_message():
    app = model_app(ModelScript([{"text": "a long answer"}]))
    app.state.faults = FaultInjector([{"kind": "cut", "count": 1}])
    with BackgroundServer(app) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(server.url + "/v1/messages", json={**conversation(0), "stream": True})
        whole = httpx.post(server.url + "/v1/messages", json={**conversation(0), "stream": True})
    assert "message_stop" in whole.text


def test_notion_errs_in_its_own_shape():
    app = notion_app(NOTION)
    app.state.faults = FaultInjector([{"status": 503, "count": 1, "match": "/v1/search"},
                                      {"status": 429, "retry_after": 3, "count": 1}])
    headers = {"Authorization": f"Bearer {NOTION}", "Notion-Version": "2022-06-28"}
    with BackgroundServer(app) as server:
        busy = httpx.post(server.url + "/v1/search", json={}, headers=headers)
        limited = httpx.get(server.url + "/v1/users/me", headers=headers)
        fine = httpx.post(server.url + "/v1/search", json={}, headers=headers)
    assert busy.status_code == 503 and busy.json() == {
        "object": "error", "status": 503, "code": "service_unavailable", "message": "injected by the stand-in"}
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "3"
    assert fine.status_code == 200 and fine.json()["object"] == "list"


def test_github_rate_limits_with_its_headers_and_answers_slowly_when_told():
    app = github_app(GITHUB)
    app.state.faults = FaultInjector([{"status": 429, "retry_after": 30, "count": 1, "match": "/repos/octo/limited/"},
                                      {"kind": "slow", "delay_seconds": 0.5, "match": "/repos/octo/slow/"}])
    headers = {"Authorization": f"Bearer {GITHUB}"}
    issue = {"title": "T"}
    with BackgroundServer(app, host=free_loopback_host_for_port80(), port=80) as server:
        limited = httpx.post(server.url + "/api/v3/repos/octo/limited/issues", json=issue, headers=headers)
        other = httpx.post(server.url + "/api/v3/repos/octo/other/issues", json=issue, headers=headers)
        started = time.monotonic()
        slow = httpx.post(server.url + "/api/v3/repos/octo/slow/issues", json=issue, headers=headers)
        waited = time.monotonic() - started
    assert limited.status_code == 429 and limited.json()["message"] == "API rate limit exceeded"
    assert limited.headers["x-ratelimit-remaining"] == "0" and int(limited.headers["x-ratelimit-reset"]) > time.time()
    assert other.status_code == 201 and slow.status_code == 201 and waited >= 0.5
    assert [i["repo"] for i in app.state.issues] == ["other", "slow"]  # the limited call opened nothing
    assert json.loads(json.dumps(app.state.faults.fired))[0]["status"] == 429

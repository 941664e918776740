"""The gateway's credential patterns (agentbox/gateway/patterns.py, Kingfisher's catalog): every format we rely on
is found, wherever a tool call carries it, and nothing is found in what the stand-ins serve or in ordinary issue
texts (the false positives that would refuse a legitimate call). The figures are printed (`pytest -s`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentbox.gateway.patterns import MASK, credential_patterns
from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.notion_api import notion_app
from agentbox.rehearsal.seed import default_notion_seed, notion_to_github_script, stable_id
from tests.credentials import CREDENTIALS, secret_part

ISSUE_TEXTS = json.loads((Path(__file__).with_name("data") / "issue_texts.json").read_text())


def as_arguments(text: str) -> str:
    """The text as create_issue's arguments reach the guard (JSON: a key's newlines escaped)."""
    return json.dumps({"owner": "octo", "repo": "demo", "title": "Deploy failing",
                       "body": f"Steps to reproduce:\n1. run deploy\n\n{text}\n\nThanks!"}, ensure_ascii=False)


@pytest.mark.parametrize(("label", "token", "line"), CREDENTIALS, ids=[c[0] for c in CREDENTIALS])
def test_a_credential_is_found_in_text_and_in_arguments_and_masked_whole(label, token, line):
    patterns = credential_patterns()
    for text in (line.format(t=token), as_arguments("ünïcode first: " + line.format(t=token))):
        found = patterns.find(text)
        assert found, (label, text[:80])
        masked, rules = patterns.redact(text)
        assert secret_part(token) not in masked and MASK in masked and rules
    assert json.loads(patterns.redact(as_arguments(line.format(t=token)))[0])  # masked JSON is still JSON


def standin_texts() -> list[str]:
    """What the stand-ins serve: the seed's texts and the Notion and GitHub APIs' answers to what the agent asks."""
    seed = default_notion_seed()
    texts = [json.dumps(seed.model_dump())]
    texts += [text for db in seed.databases for page in db.pages for text in [page.title, *page.content]]
    headers = {"Authorization": "Bearer standin-token", "Notion-Version": "2022-06-28"}
    with TestClient(notion_app("standin-token")) as notion:
        texts.append(notion.post("/v1/search", headers=headers, json={"query": ""}).text)
        for db in seed.databases:
            texts.append(notion.get(f"/v1/databases/{stable_id('database', db.title)}", headers=headers).text)
            texts.append(notion.post(f"/v1/data_sources/{stable_id('data_source', db.title)}/query",
                                     headers=headers, json={}).text)
            for page in db.pages:
                page_id = stable_id("page", db.title, page.title)
                texts.append(notion.get(f"/v1/pages/{page_id}", headers=headers).text)
                texts.append(notion.get(f"/v1/blocks/{page_id}/children", headers=headers).text)
    body = "Databases found in the Notion workspace:\n\n- Product Roadmap\n- Bug Tracker\n- Meeting Notes"
    with TestClient(github_app("standin-token", login="rehearsal-bot"), base_url="http://127.0.0.7") as github:
        gh = {"Authorization": "Bearer standin-token"}
        texts.append(github.post("/api/v3/repos/octo/demo/issues", headers=gh,
                                 json={"title": "Notion databases", "body": body}).text)
        texts.append(github.get("/api/v3/repos/octo/demo/issues/1", headers=gh).text)
        texts.append(github.get("/api/v3/user", headers=gh).text)
    texts.append(json.dumps(notion_to_github_script("octo", "demo", "Notion databases", body).model_dump()))
    return texts


def test_nothing_is_found_in_what_the_stand_ins_serve():
    texts = standin_texts()
    hits = {text[:60]: [c.rule for c in credential_patterns().find(text)] for text in texts}
    print(f"\nstand-in texts: {len(texts)}, {sum(map(len, texts))} chars, with a hit: "
          f"{sum(bool(h) for h in hits.values())}")
    assert len(texts) > 30 and {k: v for k, v in hits.items() if v} == {}


def test_nothing_is_found_in_ordinary_issue_texts():
    """65 issue bodies full of what naive scanners trip on: SHAs, UUIDs, digests, base64, public keys, hashes."""
    patterns = credential_patterns()
    hits = [(i, [c.rule for c in patterns.find(text)]) for i, text in enumerate(ISSUE_TEXTS)]
    hits += [(i, [c.rule for c in patterns.find(as_arguments(text))]) for i, text in enumerate(ISSUE_TEXTS)]
    print(f"\nissue texts: {len(ISSUE_TEXTS)}, raw and as arguments, with a hit: {sum(bool(h) for _, h in hits)}")
    assert len(ISSUE_TEXTS) >= 60 and [h for h in hits if h[1]] == []


def test_a_10_kb_argument_is_scanned_in_well_under_a_millisecond_at_the_median():
    """A figure, printed (the gateway's whole added latency is measured in benchmarks/gateway_latency.py)."""
    patterns = credential_patterns()
    text = as_arguments("\n\n".join(ISSUE_TEXTS))[:10_000]
    times = []
    for _ in range(200):
        started = time.perf_counter()
        patterns.find(text)
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"\nscan of {len(text)} chars: median {times[100] * 1000:.3f} ms, p95 {times[190] * 1000:.3f} ms")
    assert patterns.find(text) == []


def test_every_credential_of_a_text_is_masked_and_named():
    """A Notion answer repeats a page's text (`content` and `plain_text`): each copy, and each kind, is masked."""
    tokens = {label: token for label, token, _ in CREDENTIALS}
    github, slack = tokens["github classic token"], tokens["slack bot token"]
    text = json.dumps({"content": f"use {github}", "plain_text": f"use {github}", "note": f"or {slack}"})
    masked, rules = credential_patterns().redact(text)
    assert github not in masked and slack not in masked and masked.count(MASK) == 3
    assert rules == ["github-pat", "slack-bot-token"] and json.loads(masked)

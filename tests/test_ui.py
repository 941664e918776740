"""A person in the Prefect UI, in a real browser: headless Chromium (Debian's, driven by Playwright) against the real
server, deployments and worker of tests/deployed.py.

The person triggers notion-to-github from its deployment's Run form, waits on the run's page until it pauses for
approval of `create_issue`, and answers the form: approve (the run completes and its artifact says so), or deny with
a reason (the run fails naming the denial). A failing test leaves a screenshot of the page in .screenshots/.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

from tests.deployed import call, final_state, trigger
from tests.support import PROJECT

pytestmark = pytest.mark.usefixtures("no_leftovers")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root and offline: no sandbox of Chromium's own (it runs as a test's child), and none of its background traffic.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SCREENSHOTS = PROJECT / ".screenshots"
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.on("response", print_api_call)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{request.node.name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failing page: {path}")
    page.close()


def print_api_call(response) -> None:
    """Every request of the page's but a successful GET, printed with a failing test's output: what it sent, and
    what the API refused (the UI says only "Something went wrong")."""
    if response.status >= 400 or response.request.method != "GET":
        print(f"{response.request.method} {response.url} -> {response.status}")


def off_the_page(function, *args):
    """Run `function` (which may use asyncio.run: the Prefect client) in a thread of its own: Playwright's sync API
    holds an event loop in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def run_from_the_deployment_form(page, server, repo: str) -> str:
    """Deployments → notion-to-github → Run → Custom run, the repository typed into the form, Submit; the new run's
    id once the worker has named it."""
    page.goto(f"{server.ui}/deployments")
    page.get_by_role("link", name="notion-to-github", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    form_field(page, page, "Repo").locator("textarea").fill(repo)
    assert form_field(page, page, "backend").locator(".p-select-button__value").inner_text() == "auto"  # a choice
    for _ in range(3):  # as a person would: under load the UI may say "Something went wrong" and create nothing
        page.get_by_role("button", name="Submit").click()
        try:  # once the run exists the UI leaves the form
            page.wait_for_url(lambda url: not url.split("?")[0].endswith("/run"), timeout=20_000)
            break
        except PlaywrightTimeout:
            print(f"the Run form stayed open after Submit; submitting {repo} again")

    async def named(client: PrefectClient):
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"notion-to-github {repo}"])))

    deadline = time.monotonic() + 60
    while not (runs := off_the_page(call, server, named)):
        assert time.monotonic() < deadline, f"no run for {repo} was created"
        time.sleep(0.5)
    return str(runs[0].id)


def form_field(page, scope, label: str):
    """One field of a Prefect schema form in `scope` (the page, a dialog), by its label."""
    title = page.locator(".schema-form-property__label",  # rooted at the page: `has` locators are relative
                         has_text=re.compile(rf"^\s*{re.escape(label)}( \(Optional\))?\s*$"))
    return scope.locator(".schema-form-property").filter(has=title).last


def answer_the_approval(page, server, run_id: str, decision: str, reason: str) -> None:
    """On the run's page: wait for Paused, Resume, choose the decision, give the reason, Submit."""
    def answer(dialog):
        assert '"repo": ' in dialog.inner_text()  # the call's arguments, shown before anything runs
        choose(page, dialog, decision)
        form_field(page, dialog, "Reason").locator("textarea").fill(reason)

    resume_from_the_runs_page(page, server, run_id, answer)


def choose(page, dialog, decision: str) -> None:
    select = form_field(page, dialog, "Decision").locator(".p-select-button__control")
    select.focus()
    page.keyboard.press("Space")  # opens the choices (a click toggles them open and shut again)
    page.get_by_text(decision, exact=True).click()


def resume_from_the_runs_page(page, server, run_id: str, answer) -> None:
    """The run's page → Resume → `answer(dialog)` fills the approval form → Submit, until the run leaves Paused.

    As a person would: on SQLite, Prefect's server can answer a resume with 503 "database is locked" under load (its
    resume writes in a deferred transaction), the UI says so and the run stays Paused; the person submits again.
    """
    async def read(client: PrefectClient):
        return await client.read_flow_run(run_id)

    def paused() -> bool:
        return off_the_page(call, server, read).state.is_paused()

    for attempt in range(3):
        page.goto(f"{server.ui}/runs/flow-run/{run_id}")
        resume = page.get_by_role("button", name="Resume")
        try:
            resume.wait_for(timeout=WAIT_MS if attempt == 0 else 30_000)  # shown once the run is Paused
        except PlaywrightTimeout:
            if attempt and not paused():  # the last answer took, just late
                return
            raise
        resume.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Approve create_issue?").wait_for()
        answer(dialog)
        dialog.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not paused():
                return
            time.sleep(0.5)
        print(f"run {run_id} still Paused 30 s after Submit (attempt {attempt + 1}); answering again")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"still-paused-{attempt}.png"), full_page=True)
    raise AssertionError(f"run {run_id} stayed Paused after three answers in the UI")


def artifact_of(server, run_id: str) -> str:
    async def read(client: PrefectClient):
        return await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))

    return next(str(a.data) for a in off_the_page(call, server, read) if a.key == "notion-to-github")


def test_a_person_approves_create_issue_from_the_runs_page(page, server, worker):
    run_id = run_from_the_deployment_form(page, server, "octo/ui-approved")
    answer_the_approval(page, server, run_id, "approve", "Checked the repository")

    page.get_by_text("Completed", exact=True).first.wait_for(timeout=WAIT_MS)
    run = off_the_page(final_state, server, run_id)
    assert run.state.is_completed(), run.state
    markdown = artifact_of(server, run_id)
    assert "**Outcome:** succeeded" in markdown and "https://github.com/octo/ui-approved/issues/1" in markdown
    assert "| approved | prefect-ui |" in markdown and "Checked the repository" in markdown
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("Notion to github run summary").first.wait_for()  # the artifact, listed on the run's page


def test_a_person_denies_create_issue_and_the_run_fails_naming_the_denial(page, server, worker):
    run_id = run_from_the_deployment_form(page, server, "octo/ui-denied")
    answer_the_approval(page, server, run_id, "deny", "Not this repository")

    page.get_by_text("Failed", exact=True).first.wait_for(timeout=WAIT_MS)
    run = off_the_page(final_state, server, run_id)
    assert run.state.is_failed(), run.state
    denial = "create_issue was not approved: a person denied it on the prefect-ui (Not this repository)."
    assert denial in run.state.message
    assert denial in artifact_of(server, run_id) and "| denied | prefect-ui |" in artifact_of(server, run_id)


def test_the_link_in_a_notification_opens_the_paused_runs_resume_form(page, server, worker, listener):
    """Someone gets the message a paused run sends, follows its link, and answers on the page it opens, signing it."""
    run_id = off_the_page(trigger, server, "notion-to-github/notion-to-github", {"issue": {"repo": "octo/ui-link"}})
    _, message = off_the_page(listener.wait_for, "Approval needed: create_issue", run_id)
    link = re.search(r"The run's page: (\S+)", message["body"]).group(1)
    assert link == f"{server.ui}/runs/flow-run/{run_id}"
    page.goto(link)
    page.get_by_role("button", name="Resume").wait_for(timeout=WAIT_MS)  # the link opens the paused run's page

    def answer(dialog):
        choose(page, dialog, "approve")
        form_field(page, dialog, "Answered by").locator("textarea").fill("Grace from the message")

    resume_from_the_runs_page(page, server, run_id, answer)

    page.get_by_text("Completed", exact=True).first.wait_for(timeout=WAIT_MS)
    assert off_the_page(final_state, server, run_id).state.is_completed()
    assert "| approved | prefect-ui | Grace from the message |" in artifact_of(server, run_id)


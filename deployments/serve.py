"""Serve the flows from one long-running process, no work pool needed: `python -m deployments.serve`.

Trigger runs from the Prefect UI or with `prefect deployment run 'notion-to-github/notion-to-github'`.
"""

from __future__ import annotations

from prefect import serve

from flows.agent_session import agent_session
from flows.notion_to_github import notion_to_github
from flows.reap_sandboxes import reap_sandboxes


def main() -> None:
    serve(
        notion_to_github.to_deployment(name="notion-to-github", parameters={"repo": "octo-org/demo", "rehearsal": True}),
        agent_session.to_deployment(name="agent-session"),
        reap_sandboxes.to_deployment(name="reap-sandboxes", interval=300),
        limit=4,
    )


if __name__ == "__main__":
    main()

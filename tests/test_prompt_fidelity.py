"""A prompt reaches the model byte for byte, whatever it holds: it travels as a file on stdin, never in a shell string.
On each backend, since each has its own way of writing files and starting commands in the sandbox."""

from __future__ import annotations

import asyncio

import pytest

from agentbox.rehearsal.model import user_texts
from flows.agent_session import EXAMPLE_MCP, SessionRequest, agent_session

pytestmark = pytest.mark.usefixtures("prefect_api")

NASTY = (
    "Quotes ' \" and `backticks`, $(touch /tmp/pwned) ${HOME} $HOME; rm -rf ~ && echo \\n \\\\\n"
    "Newlines\n\n\ttabs, unicode: héllo ✓ 日本語 🚀 \u200b zero-width, <xml attr='x'>&amp;</xml> %s %d {{braces}}\n"
    "EOF\n'EOF'\n-- --help -p --dangerously-skip-permissions\n"
)


def test_a_hostile_20_kb_prompt_reaches_the_model_byte_for_byte(world):
    model = world.play([{"text": "received"}])
    prompt = (NASTY * (20_000 // len(NASTY) + 1))[:20_000] + "\nThe end. ✓"
    assert len(prompt.encode()) > 20_000

    result = asyncio.run(agent_session(SessionRequest(prompt=prompt, mcp=EXAMPLE_MCP)))

    assert result.run.result == "received"
    conversations = [r for r in model.app.state.requests if r.get("tools")]  # the agent's turn, not a side request
    assert conversations, "the model stand-in saw no agent request"
    assert prompt in user_texts(conversations[0]), "the prompt was altered on its way to the model"

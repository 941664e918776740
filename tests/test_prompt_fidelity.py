"""A prompt reaches the model byte for byte, whatever it holds: it travels as a file on stdin, never in a shell string."""

from __future__ import annotations

import asyncio

import pytest

from agentbox.rehearsal.model import user_texts
from tests.sessions import rehearsed_session_with_model_requests

pytestmark = pytest.mark.usefixtures("prefect_api", "no_leftovers")

NASTY = (
    "Quotes ' \" and `backticks`, $(touch /tmp/pwned) ${HOME} $HOME; rm -rf ~ && echo \\n \\\\\n"
    "Newlines\n\n\ttabs, unicode: héllo ✓ 日本語 🚀 \u200b zero-width, <xml attr='x'>&amp;</xml> %s %d {{braces}}\n"
    "EOF\n'EOF'\n-- --help -p --dangerously-skip-permissions\n"
)


def test_a_hostile_20_kb_prompt_reaches_the_model_byte_for_byte():
    prompt = (NASTY * (20_000 // len(NASTY) + 1))[:20_000] + "\nThe end. ✓"
    assert len(prompt.encode()) > 20_000
    result, requests = asyncio.run(rehearsed_session_with_model_requests([{"text": "received"}], prompt))
    assert result.run.result == "received"
    conversations = [r for r in requests if r.get("tools")]  # the agent's turn, not a side request
    assert conversations, "the model stand-in saw no agent request"
    texts = user_texts(conversations[0])
    assert prompt in texts, "the prompt was altered on its way to the model"

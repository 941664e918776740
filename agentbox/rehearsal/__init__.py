"""Rehearsal mode: local stand-ins for Notion, GitHub and the Anthropic API.

They speak the real wire protocols so the real MCP servers and the real
``claude`` binary can run end to end without network access.
"""

from agentbox.rehearsal.github_api import github_app
from agentbox.rehearsal.model import ModelScript, Step, model_app, user_texts
from agentbox.rehearsal.notion_api import notion_app
from agentbox.rehearsal.seed import NotionSeed, default_notion_seed, echo_script, notion_to_github_script
from agentbox.rehearsal.servers import BackgroundServer, free_loopback_host_for_port80

__all__ = [
    "BackgroundServer",
    "ModelScript",
    "NotionSeed",
    "Step",
    "default_notion_seed",
    "echo_script",
    "free_loopback_host_for_port80",
    "github_app",
    "model_app",
    "notion_app",
    "notion_to_github_script",
    "user_texts",
]

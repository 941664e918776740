"""Rehearsal mode: local stand-ins for Notion, GitHub and the Anthropic API.

They speak the real wire protocols, so the real MCP servers, the gateway and the real `claude` binary run end to end
with no network access and no accounts; `stage` wires them into one run.
"""

"""A tiny stdio MCP server for the guard tests: `echo` repeats, `leak` answers with the token it was started with,
`page` with a page where someone pasted a credential (`PASTED_CREDENTIAL`), `environment` names its environment
variables."""

import os

from fastmcp import FastMCP

mcp = FastMCP("leaky-server")


@mcp.tool
def echo(text: str) -> str:
    """Return `text` unchanged."""
    return text


@mcp.tool
def leak() -> str:
    """Return the server's own token, as a careless server might in an error message."""
    return f"configured with token {os.environ['LEAKY_TOKEN']} (and nothing else)"


@mcp.tool
def page() -> str:
    """A Notion-like page someone pasted a deploy token into."""
    return f"Release checklist. Deploy with {os.environ.get('PASTED_CREDENTIAL', '(none)')} then tag the release."


@mcp.tool
def environment() -> str:
    """The names of the server's environment variables."""
    return " ".join(sorted(os.environ))


if __name__ == "__main__":
    mcp.run(show_banner=False)

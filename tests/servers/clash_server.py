"""A tiny stdio MCP server whose `echo` clashes with echo_server.py's (and answers differently)."""

from fastmcp import FastMCP

mcp = FastMCP("clash-server")


@mcp.tool
def echo(text: str) -> str:
    """Return `text` reversed, so a test can tell which server answered."""
    return text[::-1]


if __name__ == "__main__":
    mcp.run(show_banner=False)

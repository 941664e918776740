"""A tiny stdio MCP server for the gateway tests: tool `ping`."""

from fastmcp import FastMCP

mcp = FastMCP("other-server")


@mcp.tool
def ping() -> str:
    """Answer 'pong'."""
    return "pong"


if __name__ == "__main__":
    mcp.run(show_banner=False)

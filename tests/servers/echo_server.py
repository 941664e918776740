"""A tiny stdio MCP server for the gateway tests: tools `echo` and `add`."""

from fastmcp import FastMCP

mcp = FastMCP("echo-server")


@mcp.tool
def echo(text: str) -> str:
    """Return `text` unchanged."""
    return text


@mcp.tool
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


if __name__ == "__main__":
    mcp.run(show_banner=False)

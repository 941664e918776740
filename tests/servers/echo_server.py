"""A tiny stdio MCP server for the gateway tests: tools `echo` and `add`."""

import os

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
    if os.environ.get("SERVER_STARTS_LOG"):  # the gateway tests count how often each server was started
        with open(os.environ["SERVER_STARTS_LOG"], "a") as starts:
            starts.write(f"{mcp.name} {os.getpid()}\n")
    mcp.run(show_banner=False)

"""A tiny stdio MCP server for the gateway tests: tool `ping`."""

import os

from fastmcp import FastMCP

mcp = FastMCP("other-server")


@mcp.tool
def ping() -> str:
    """Answer 'pong'."""
    return "pong"


if __name__ == "__main__":
    if os.environ.get("SERVER_STARTS_LOG"):  # the gateway tests count how often each server was started
        with open(os.environ["SERVER_STARTS_LOG"], "a") as starts:
            starts.write(f"{mcp.name} {os.getpid()}\n")
    mcp.run(show_banner=False)

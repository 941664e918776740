"""An MCP server that fails at once, like one started with a bad credential."""

import sys

print("broken_server: refusing to start (bad credentials)", file=sys.stderr)
sys.exit(1)

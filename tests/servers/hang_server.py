"""An MCP server that never answers: it reads nothing and writes nothing until it is killed."""

import threading

threading.Event().wait()

"""`python -m agentbox.gateway --config '<json>'`: see server.py."""

import sys

from agentbox.gateway.server import main

if __name__ == "__main__":
    sys.exit(main())

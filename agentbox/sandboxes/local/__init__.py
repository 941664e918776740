"""The local backend: sandboxes on this host, isolated with bubblewrap.

Each sandbox is a state directory (`state`) plus a detached supervisor process (`supervisor`) that runs the MCP
gateway (this project's, with the interface of E2B's `mcp-gateway`) under bubblewrap and kills everything when the
TTL expires, even if nobody asks. Commands run in their own bubblewrap instance over the same private home and /tmp,
so they see the same files. What a sandbox sees of the host, and how its commands are confined to a uid and limits of
their own, is `bwrap` (with `confine` and `owners`); its network, none but a way out through its egress proxy, is
`network` (with `jailnet` and `egress`). A warm spare (`spare`) is a sandbox's gateway started before it is asked
for. `adapter` is the port's face of it all.

This is isolation for a development machine, not a security boundary like E2B's microVMs: it shares the host's
kernel, and the gateway (this project's code, holding the MCP servers' credentials) runs as the invoking user.
"""

from agentbox.sandboxes.local.adapter import LocalSandboxes

__all__ = ["LocalSandboxes"]

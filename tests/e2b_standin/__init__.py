"""An offline stand-in for E2B, driven by the real `e2b` SDK: control plane (REST) and envd (Connect RPC, files),
sandboxes under bubblewrap, each with this project's gateway as its `mcp-gateway`. See `standin.py`.

    with E2BStandIn(catalog_file="catalog.json") as e2b:
        for name, value in e2b.env.items():
            monkeypatch.setenv(name, value)
        sbx = await AsyncSandbox.create(mcp={"echo": {}})
        url = e2b.env["E2B_MCP_URL"].format(sandbox_id=sbx.sandbox_id, domain=sbx.sandbox_domain, port=50005)
"""

from tests.e2b_standin.state import MCP_PORT, CommandRecord, Fault, RecordedRequest, SandboxRecord
from tests.e2b_standin.standin import API_KEY, FAULT_KINDS, MCP_URL_TEMPLATE, E2BStandIn

__all__ = [
    "API_KEY",
    "FAULT_KINDS",
    "MCP_PORT",
    "MCP_URL_TEMPLATE",
    "CommandRecord",
    "E2BStandIn",
    "Fault",
    "RecordedRequest",
    "SandboxRecord",
]

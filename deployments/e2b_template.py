"""An E2B template for faster sessions: E2B's `mcp-gateway` with the MCP servers' images pulled at build time.

    python -m deployments.e2b_template --name agentbox-mcp [--servers notion githubOfficial] [--print]

Without it, the gateway pulls each server's image on the first `tools/list` of every sandbox, which is most of the
wait for readiness. Build once with E2B_API_KEY set (E2B builds it in its cloud), then set E2B_TEMPLATE=<name>.
`--print` only shows the definition E2B would build, offline.
"""

from __future__ import annotations

import argparse
import sys

from e2b import Template
from e2b.template.main import TemplateBuilder

from agentbox.errors import ConfigError
from agentbox.gateway.catalog import unknown_server
from agentbox.sandboxes.e2b import catalog_servers
from agentbox.settings import load_settings
from flows import cli
from agentbox.missions.notion_to_github import MCP

BASE = "mcp-gateway"
DEFAULT_SERVERS = list(MCP)  # the scheduled flow's servers


def template(servers: list[str]) -> TemplateBuilder:
    """The definition: E2B's gateway template plus `mcp-gateway pull` of each catalog server."""
    known = catalog_servers()
    unknown = [unknown_server(s, known, "E2B MCP server") for s in servers if s not in known]
    if unknown or not servers:
        raise ConfigError(
            f"Cannot pre-pull {'; '.join(unknown) or 'no servers'}.",
            "Name keys of E2B's MCP catalog (custom github/<owner>/<repo> servers are installed at sandbox start).",
        )
    return Template().from_template(BASE).add_mcp_server(servers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.e2b_template", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="agentbox-mcp", help="the template's name, to use as E2B_TEMPLATE")
    parser.add_argument("--servers", nargs="+", default=DEFAULT_SERVERS, help="E2B MCP catalog keys to pre-pull")
    parser.add_argument("--print", action="store_true", help="print the definition as JSON; build nothing")
    args = parser.parse_args(argv)

    try:
        definition = template(args.servers)
        if args.print:
            print(Template.to_json(definition))
            return 0
        settings = load_settings()
        settings.require("E2B_API_KEY")
        info = Template.build(
            definition, args.name, api_key=settings.e2b_api_key.get_secret_value(),
            on_build_logs=lambda entry: print(entry, file=sys.stderr),
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the SDK's build errors, reported in one line
        print(f"error: {cli.describe_failure(exc)}", file=sys.stderr)
        return 1
    print(f"Built E2B template {args.name} ({info.template_id}). Set E2B_TEMPLATE={args.name}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

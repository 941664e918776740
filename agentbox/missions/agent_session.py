"""Any catalog MCP servers and any prompt: the reusable session's request, as the Prefect UI's run form shows it and
the command line builds it. No secrets: MCP configs hold `${NAME}` references."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentbox.plan import MAX_PROMPT_CHARS, output_schema_problem
from agentbox.policy import RunPolicy

EXAMPLE_MCP = {"notion": {"internalIntegrationToken": "${NOTION_INTEGRATION_TOKEN}"}}


class SessionRequest(BaseModel):
    """What to run and with which tools: the form the Prefect UI shows for a run. No secrets: `${NAME}` references."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What Claude Code should do.")
    mcp: dict[str, dict[str, str]] = Field(
        description="MCP servers the gateway serves: catalog key -> its settings, secrets as ${NAME} references "
        "to the worker's environment.",
        examples=[EXAMPLE_MCP],
    )
    policy: RunPolicy | None = Field(
        None, description="What the agent may do, over the POLICY_* settings (default: every tool of the servers, "
        "no commands, no approvals, no budget); fields left None keep the settings'."
    )
    allowed_tools: list[str] | None = Field(
        None, description="Claude Code's own --allowedTools, as is (default: the policy's)."
    )
    bypass_permissions: bool = Field(False, description="Let Claude use every tool without asking.")
    output_schema: dict[str, Any] | None = Field(
        None, description="A JSON Schema the agent's final answer must match (Claude Code's --json-schema); the "
        "result's run.structured_output then holds it, checked. Python callers may pass a pydantic model class.",
        examples=[{"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}],
    )

    @field_validator("output_schema", mode="before")
    @classmethod
    def _schema_of_a_model(cls, value: Any) -> Any:
        """A pydantic model class stands for its JSON Schema."""
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and (problem := output_schema_problem(schema)):
            raise ValueError(problem)
        return schema

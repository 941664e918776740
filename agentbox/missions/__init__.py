"""The pure logic of each workflow: its MCP servers, its prompt, and how its success is read from the tool calls."""

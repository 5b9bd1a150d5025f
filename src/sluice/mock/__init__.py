"""The mock upstream provider: OpenAI, Anthropic, Gemini and Azure OpenAI wire formats on one port (see server.py)."""

from .server import MockOptions, MockUpstream

__all__ = ["MockOptions", "MockUpstream"]

"""Translation between wire formats: OpenAI chat (the gateway's own) and each provider's.

One module per provider format, pure functions and small stream state machines,
no I/O: the provider kinds in ``sluice.providers`` call them.
"""

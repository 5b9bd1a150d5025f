"""The gateway's server side: the gateway itself (app), its RSGI and ASGI faces, the exchange they share.

Import from the modules (``sluice.server.app``, ``.rsgi``, ``.asgi``, ``.exchange``): this package
imports nothing, so the mock upstream can use the exchange and the RSGI face without loading the
gateway.
"""

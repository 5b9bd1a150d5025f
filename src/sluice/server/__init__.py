"""The HTTP side: the gateway and its RSGI and ASGI faces."""

from .app import Gateway, create_gateway
from .asgi import ASGIApp
from .exchange import ClientGone, Exchange
from .rsgi import RSGIApp

__all__ = ["ASGIApp", "ClientGone", "Exchange", "Gateway", "RSGIApp", "create_gateway"]

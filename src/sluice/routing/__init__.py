"""Model routing: public model name → targets → the one that serves a request."""

from .table import ModelRoute, Router, Target

__all__ = ["ModelRoute", "Router", "Target"]

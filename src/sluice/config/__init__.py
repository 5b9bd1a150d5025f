"""Typed, immutable configuration and its loader."""

from .loader import interpolate, load_config, parse_config
from .model import Config, ModelConfig, ObservabilityConfig, ProviderConfig, ServerConfig, TargetConfig, UpstreamConfig

__all__ = [
    "Config",
    "ModelConfig",
    "ObservabilityConfig",
    "ProviderConfig",
    "ServerConfig",
    "TargetConfig",
    "UpstreamConfig",
    "interpolate",
    "load_config",
    "parse_config",
]

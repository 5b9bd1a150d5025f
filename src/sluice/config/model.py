"""The typed, immutable config: frozen msgspec Structs that reject unknown keys.

Later capabilities add their own sections here; the loader validates what the
types cannot say (references between sections, URLs, ranges).
"""

from __future__ import annotations

import msgspec

__all__ = ["Config", "ModelConfig", "ObservabilityConfig", "ProviderConfig", "ServerConfig", "TargetConfig",
           "UpstreamConfig"]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # A body over this is answered 413 without reading further.
    max_body_bytes: int = 8 * 1024 * 1024
    # A non-streamed upstream answer over this is answered 502 (it is buffered).
    max_response_bytes: int = 64 * 1024 * 1024
    # On SIGTERM, in-flight requests (streams included) get this long to finish.
    grace_period_s: float = 30.0


class UpstreamConfig(_Section, frozen=True):
    connect_timeout_s: float = 5.0
    # Longest silence while waiting for the response head or the next body chunk.
    read_timeout_s: float = 120.0
    # Bound on a whole non-streamed exchange (a stream is bounded by read_timeout_s between chunks).
    total_timeout_s: float = 600.0
    max_connections: int = 1024
    max_connections_per_origin: int = 256
    idle_timeout_s: float = 30.0


class ObservabilityConfig(_Section, frozen=True):
    # One JSON line per request, written by a background thread through a bounded queue.
    # Off by default until it is cheap: on, it costs 11 % of one core's throughput today
    # (bench/README.md, "The access log").
    access_log: bool = False
    access_log_path: str | None = None  # None: standard output
    access_log_queue: int = 10000  # records waiting for the sink; past this they are dropped and counted
    sample_success: float = 1.0  # fraction of successful requests logged (errors always are)
    metrics: bool = True  # GET /metrics, summed over all workers


class ProviderConfig(_Section, frozen=True):
    kind: str
    # Origin plus any path prefix that comes before /v1, e.g. https://api.groq.com/openai
    base_url: str
    api_keys: tuple[str, ...] = ()
    headers: dict[str, str] = {}
    verify_tls: bool = True
    ca_file: str | None = None


class TargetConfig(_Section, frozen=True):
    provider: str
    model: str
    weight: int = 1


class ModelConfig(_Section, frozen=True):
    targets: tuple[TargetConfig, ...]


class Config(_Section, frozen=True):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}

"""The typed, immutable config: frozen msgspec Structs that reject unknown keys.

Later capabilities add their own sections here; the loader validates what the
types cannot say (references between sections, URLs, ranges).
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

__all__ = ["ENVIRONMENT_DEFAULTS", "AbuseConfig", "Algorithm", "AnomalyConfig", "AuthConfig", "BreakerConfig",
           "ClaimsConfig", "Config",
           "DeadLetterConfig", "GeoConfig", "HealthCheckConfig", "IntrospectionConfig", "JwtIssuerConfig",
           "LimitMode", "ModelConfig", "ObservabilityConfig", "PassthroughConfig", "PolicyConfig", "PolicyMatch",
           "PowConfig", "ProviderConfig", "QuotaConfig", "QuotaPeriod", "RateLimitConfig", "ReputationConfig",
           "ResilienceConfig", "Scope", "SecurityConfig", "ServerConfig", "StaticKeyConfig", "StickyConfig",
           "StoreConfig", "Strategy", "TargetConfig", "TracingConfig", "Unit", "UpstreamConfig", "VariantConfig"]

# Fields that a file leaves out take their value from these environment variables when set (the loader
# fills them in, so the config holds every setting and nothing deeper reads the environment).
ENVIRONMENT_DEFAULTS = {
    "observability.log_level": "SLUICE_LOG_LEVEL",
    "resilience.region": "SLUICE_REGION",
}


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    host: str = "127.0.0.1"  # the address to listen on ("0.0.0.0": every interface); --host overrides it
    port: int = 8080  # the port to listen on; --port overrides it
    workers: int = 1  # worker processes (each with its own event loop); --workers overrides it
    # A body over this is answered 413 without reading further.
    max_body_bytes: int = 8 * 1024 * 1024
    # A non-streamed upstream answer over this is answered 502 (it is buffered).
    max_response_bytes: int = 64 * 1024 * 1024
    # On SIGTERM, in-flight requests (streams included) get this long to finish.
    grace_period_s: float = 30.0
    # -- connections (docs/server.md) --
    # "http1", or "auto" to take HTTP/2 (h2c) too: in "auto" Granian waits for a new connection's first bytes
    # with no timeout at all, so a connection that sends nothing is held until the caller closes it.
    http: Literal["http1", "auto"] = "http1"
    # The whole request head must arrive within this of the connection opening, or of the previous answer
    # on a kept-alive connection: it is also the idle timeout before the first byte and between requests
    # (Granian has one timer for the three). 20 s: above the 5 s an httpx-based SDK keeps an idle connection.
    header_read_timeout_s: float = 20.0
    keep_alive: bool = True  # false: one request per connection
    # A request body may take body_read_timeout_s, plus 1 s per body_min_rate_bytes_s of it; past that: 408.
    body_read_timeout_s: float = 30.0
    body_min_rate_bytes_s: int = 32 * 1024  # each this many bytes of a body add 1 s to body_read_timeout_s
    # Connections served at once, all workers together (each takes its share); the next ones wait in the
    # listen backlog (at most `backlog` of them; past that the kernel drops new ones). Keep this plus
    # upstream.max_connections under the open-file limit (ulimit -n). No per-client-IP cap: docs/server.md.
    max_connections: int = 1024
    backlog: int = 2048  # connections waiting in the kernel's listen queue, at most


class UpstreamConfig(_Section, frozen=True):
    connect_timeout_s: float = 5.0  # opening a connection to a provider (TCP and TLS)
    # Longest silence while waiting for the response head or the next body chunk.
    read_timeout_s: float = 120.0
    # Bound on a whole non-streamed exchange (a stream is bounded by read_timeout_s between chunks).
    total_timeout_s: float = 600.0
    max_connections: int = 1024  # connections to providers per worker, all origins together
    max_connections_per_origin: int = 256  # connections per worker to one origin (scheme, host, port)
    idle_timeout_s: float = 30.0  # a pooled connection unused this long is closed


class TracingConfig(_Section, frozen=True):
    # OpenTelemetry traces over OTLP/HTTP (protobuf).  Off: the request path pays nothing.
    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # the collector's OTLP/HTTP traces URL
    headers: dict[str, str] = {}  # e.g. an authorization header for the collector
    service_name: str = "sluice"  # the service.name resource attribute of every span
    # Root spans sampled at this ratio; a caller's traceparent decides for its own trace.
    sample_ratio: float = 1.0
    queue_size: int = 4096  # finished spans waiting for export; past this they are dropped and counted
    batch_size: int = 512  # spans sent per export, at most; a full batch is sent at once
    flush_interval_s: float = 1.0  # a batch that is not full is sent after this long
    timeout_s: float = 5.0  # one export attempt, retries included


class LogFormat(enum.Enum):
    TEXT = "text"  # one line of text per record
    JSON = "json"  # one JSON object per line, for log pipelines


class ObservabilityConfig(_Section, frozen=True):
    # Application logs (start, stop, upstream failures) on standard error.
    log_format: LogFormat = LogFormat.TEXT
    log_level: str | None = None  # debug, info, warning, error or critical; None: info
    # One JSON line per request, queued and written by the event loop, never waiting on the sink.
    # On by default: with metrics it costs ~2-3 % of throughput (bench/README.md, 2026-12-05).
    access_log: bool = True
    access_log_path: str | None = None  # None: standard output
    access_log_queue: int = 10000  # records waiting for the sink; past this they are dropped and counted
    sample_success: float = 1.0  # fraction of successful requests logged (errors always are)
    # Debug only: request and response bodies in the access log (clipped, secrets and PII redacted).
    log_bodies: bool = False
    metrics: bool = True  # GET /metrics, summed over all workers
    tracing: TracingConfig = TracingConfig()  # OpenTelemetry traces (docs/observability.md)
    # Bearer token for /health/details; unset, that endpoint answers 404.
    health_details_token: str | None = None


class ProviderConfig(_Section, frozen=True):
    kind: str  # the wire format: openai, anthropic, gemini, azure, or an installed plugin's (docs/providers.md)
    # Origin plus any path prefix that comes before /v1, e.g. https://api.groq.com/openai
    base_url: str
    # The provider's keys, usually ${ENV} references; with several, each (URL, key) pair is a deployment.
    api_keys: tuple[str, ...] = ()
    headers: dict[str, str] = {}  # extra headers sent with every request to it
    verify_tls: bool = True  # false: accept any certificate (a test upstream only)
    ca_file: str | None = None  # CA bundle for a provider behind a private CA
    # Kind-specific settings: azure needs api_version; anthropic takes anthropic_version.
    api_version: str | None = None
    # What its targets can do (chat, completions, embeddings, vision, tools, json_mode,
    # streaming); None: what the kind implies.
    capabilities: tuple[str, ...] | None = None
    # More base URLs serving the same API (regional endpoints, replicas): each (URL, key) pair of a
    # target is a deployment of its own, with its own health.
    base_urls: tuple[str, ...] = ()
    key_cooldown_s: float = 30.0  # a key answered 429 rests this long when no Retry-After says otherwise
    max_cooldown_s: float = 300.0  # the longest rest a Retry-After may impose


class TargetConfig(_Section, frozen=True):
    provider: str  # a provider of this config, by name
    model: str  # the model's name at the provider
    weight: int = 1  # its share of the model's traffic under the weighted strategy
    capabilities: tuple[str, ...] | None = None  # None: the provider's
    region: str | None = None  # for the geo strategy, e.g. "eu-west"
    tags: tuple[str, ...] = ()  # free labels (shown in health details)


class Strategy(enum.Enum):
    WEIGHTED = "weighted"  # smooth weighted round-robin (nginx)
    LEAST_INFLIGHT = "least_inflight"  # the fewest requests in flight per unit of weight (in this worker)
    LATENCY = "latency"  # power of two choices over EWMA latency
    HEALTH = "health"  # success ratio x latency score, adapting over time
    STICKY = "sticky"  # rendezvous hashing on sticky.hash_on, so a conversation stays on one healthy deployment
    GEO = "geo"  # prefer the caller's (or this instance's) region, spill over by geo.spill


class StickyConfig(_Section, frozen=True):
    # "key" (the caller's credential), "user" (the authenticated user), or "header:<name>".  Written
    # hash_on in the file: YAML 1.1 reads a bare `on:` key as the boolean true.
    on: str = msgspec.field(default="key", name="hash_on")


class GeoConfig(_Section, frozen=True):
    region_header: str = "x-sluice-region"  # the caller's region; absent: resilience.region
    # region -> the regions to try next, in order, when none of its deployments is available; regions
    # not listed spill over to any other.
    spill: dict[str, tuple[str, ...]] = {}


class VariantConfig(_Section, frozen=True):
    """An A/B split: this share of the model's traffic goes to another configured model, labelled."""

    name: str  # the label in metrics and logs (the rest of the traffic is labelled "control")
    model: str  # a model of this config
    percent: float  # 0 < percent < 100


class ModelConfig(_Section, frozen=True):
    targets: tuple[TargetConfig, ...]  # the deployments that serve it, at least one (docs/routing.md)
    strategy: Strategy = Strategy.WEIGHTED  # how a request picks one of the targets
    sticky: StickyConfig = StickyConfig()  # the sticky strategy's hash key
    geo: GeoConfig = GeoConfig()  # the geo strategy's regions
    # Models to try, in order, when every deployment of this one is open, cooling down or failing; a
    # fallback that cannot serve a request (n > 1, tools, images...) is skipped for that request.
    fallbacks: tuple[str, ...] = ()
    variants: tuple[VariantConfig, ...] = ()  # A/B splits of its traffic to other models


class Scope(enum.Enum):
    KEY = "key"  # the caller's API key (Authorization: Bearer, or x-api-key)
    USER = "user"  # the caller's user (auth on); a request with no user is not counted by such a policy
    TEAM = "team"  # the caller's team (auth on); a request with no team is not counted by such a policy
    IP = "ip"  # the client address, X-Forwarded-For honoured from trusted proxies only
    ROUTE = "route"  # the endpoint
    MODEL = "model"  # the model the request names
    GLOBAL = "global"  # one bucket for every request it matches


class Unit(enum.Enum):
    REQUESTS = "requests"  # each request counts 1
    TOKENS = "tokens"  # prompt plus completion tokens: max_tokens reserved on admission, settled from the usage


class Algorithm(enum.Enum):
    TOKEN_BUCKET = "token_bucket"  # refills continuously at rate per period_s, holding at most burst
    # at most rate in any period_s, estimated from this and the previous window's counts
    SLIDING_WINDOW = "sliding_window"


class LimitMode(enum.Enum):
    LOCAL = "local"  # this instance's own buckets (compiled)
    DISTRIBUTED = "distributed"  # exact across instances: one Redis round trip per request
    HYBRID = "hybrid"  # local admission, synced with Redis every sync_interval_s (bounded overshoot)


class PolicyMatch(_Section, frozen=True):
    """Which requests a policy applies to; an empty list matches all."""

    models: tuple[str, ...] = ()  # models of this config, by name
    routes: tuple[str, ...] = ()  # route labels, as in metrics: chat, completions, embeddings, messages, files...
    keys: tuple[str, ...] = ()  # caller API keys (compared by hash, never logged)


class PolicyConfig(_Section, frozen=True):
    name: str  # unique among policies and quotas: named in 429 answers, headers and metrics
    scope: Scope  # what one bucket counts for: each key, user, team, IP, route or model, or all together
    rate: float  # units per period
    unit: Unit = Unit.REQUESTS  # what is counted
    period_s: float = 60.0  # the period of rate
    burst: float | None = None  # token bucket capacity; None: rate
    algorithm: Algorithm = Algorithm.TOKEN_BUCKET  # how the limit is counted
    mode: LimitMode | None = None  # None: distributed when ratelimit.redis is set, else local
    fail_open: bool = True  # Redis down: fall back to local buckets (True) or answer 503 (False)
    soft_limit: float | None = None  # fraction of the limit past which a warning header is added
    match: PolicyMatch = PolicyMatch()  # which requests it counts


class QuotaPeriod(enum.Enum):
    DAY = "day"  # ends at midnight in ratelimit.timezone
    MONTH = "month"  # ends on the 1st at midnight in ratelimit.timezone


class QuotaConfig(_Section, frozen=True):
    """A daily or monthly allowance per key, user or team, kept in SQLite or Redis across restarts."""

    name: str  # unique among policies and quotas: named in 429 answers and metrics
    scope: Scope  # key, user or team
    limit: float  # units per calendar period
    unit: Unit = Unit.REQUESTS  # what is counted
    period: QuotaPeriod = QuotaPeriod.DAY  # the calendar period the limit is for
    match: PolicyMatch = PolicyMatch()  # which requests it counts


class RateLimitConfig(_Section, frozen=True):
    policies: tuple[PolicyConfig, ...] = ()  # rate limits: requests or tokens per period (docs/ratelimits.md)
    quotas: tuple[QuotaConfig, ...] = ()  # allowances per day or month, kept across restarts
    timezone: str = "UTC"  # IANA name: where quota days and months begin
    quota_store: str = "sluice-quotas.db"  # SQLite file of quota usage when redis is not set
    quota_sync_s: float = 1.0  # how often quota usage is pushed to (and read back from) the store
    redis: str | None = None  # redis://host:port/db for distributed limits
    redis_timeout_s: float = 0.05  # the most a slow Redis adds to a request
    sync_interval_s: float = 0.1  # hybrid policies: how often each instance pushes its takes to Redis
    # The most (policy, subject) pairs hybrid policies keep per process; past it a new subject is checked
    # on Redis per request (exact) until the syncs forget idle ones.
    hybrid_max_subjects: int = 100_000
    # The most (quota, subject) counters quotas keep per process; past it the ones the store holds in full
    # are forgotten (loaded again if their subject comes back).
    quota_max_subjects: int = 100_000
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    default_max_tokens: int = 1024  # token reservation for a request that names no max_tokens
    soft_limit: float | None = None  # default for every policy


class PassthroughConfig(_Section, frozen=True):
    # The other OpenAI endpoints (/v1/responses, /v1/files, /v1/audio/..., /v1/threads/...) go to
    # the model's openai-kind target when the JSON body names a model, else to this provider.
    provider: str | None = None


class ClaimsConfig(_Section, frozen=True):
    """Where a verified token names its caller: dotted paths into the claims (e.g. "org.team")."""

    user: str = "sub"  # the claim that names the user
    team: str | None = None  # the claim that names the team; None: no team
    roles: str | None = None  # a list of strings or one space-separated string, e.g. "realm_access.roles"


class JwtIssuerConfig(_Section, frozen=True):
    """An issuer whose bearer JWTs are accepted (sluice.auth.jwt)."""

    issuer: str  # compared with the token's iss exactly
    audience: str | tuple[str, ...]  # the token's aud must name one of these
    # Never "none"; HS256/HS384/HS512 only with hs256_secret and then alone (no key-type confusion).
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    jwks_uri: str | None = None  # None: discovered from {issuer}/.well-known/openid-configuration
    hs256_secret: str | None = None  # the shared secret of HS* tokens, e.g. "${JWT_SECRET}"
    leeway_s: float = 30.0  # clock skew allowed on exp and nbf
    jwks_ttl_s: float = 3600.0  # keys are refetched after this
    jwks_min_refresh_s: float = 30.0  # an unknown kid refetches the keys at most this often
    timeout_s: float = 5.0  # one discovery or JWKS fetch
    ca_file: str | None = None  # CA bundle for an issuer behind a private CA
    claims: ClaimsConfig = ClaimsConfig()  # where a token names its caller


class IntrospectionConfig(_Section, frozen=True):
    """An RFC 7662 token introspection endpoint for opaque bearer tokens (sluice.auth.introspection)."""

    endpoint: str  # the introspection URL
    client_id: str  # sent with client_secret as HTTP basic auth
    client_secret: str  # usually an ${ENV} reference
    max_ttl_s: float = 300.0  # an active answer is cached until the token's exp, at most this long
    inactive_ttl_s: float = 10.0  # an inactive answer is cached this long
    token_type_hint: str | None = None  # e.g. "access_token"
    timeout_s: float = 5.0  # one introspection call
    ca_file: str | None = None  # CA bundle for an endpoint behind a private CA
    claims: ClaimsConfig = ClaimsConfig()  # where the answer names its caller


class StaticKeyConfig(_Section, frozen=True):
    """An API key declared in the config (the embedded quickstart): its secret usually an ``${ENV}`` reference."""

    name: str  # its key id is "static:<name>"
    key: str  # the secret itself, at least 20 characters
    roles: tuple[str, ...]  # deny by default: name what it may do, e.g. [admin] or [user]
    models: tuple[str, ...] = ()  # glob patterns; empty: any model its roles allow
    user: str | None = None  # the user it acts as (rate limits and quotas of scope user, audit)
    team: str | None = None  # the team it belongs to (scope team)
    service_account: bool = False  # a machine's key, not a person's: a label on its caller, nothing more


class AuthConfig(_Section, frozen=True):
    # Off: the gateway serves everyone as before.  On: every /v1 and /admin request needs a credential
    # (an API key, a JWT of a configured issuer, an introspected token) and a role that allows it.
    enabled: bool = False
    static_keys: tuple[StaticKeyConfig, ...] = ()  # keys declared here; the others are in the store
    # Role -> permissions.  Built in: admin = ["*"], user = every non-admin permission; these override
    # them, and roles in the store override both.
    roles: dict[str, tuple[str, ...]] = {}
    revocation_poll_s: float = 0.5  # how often each worker reads the store's change feed
    # CIDRs (IPv4 or IPv6) allowed to call; empty: any.  X-Forwarded-For counts from ratelimit.trusted_proxies only.
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()  # CIDRs refused even when ip_allow lists them
    signature_skew_s: float = 300.0  # a signed request's timestamp may be this far off
    key_cache_size: int = 100_000  # API keys kept in each worker's cache
    # Refused credentials allowed per client address and worker before 429 (too_many_auth_failures), checked
    # before any store lookup; a burst of failure_limit, refilled over failure_period_s.  0: off.
    failure_limit: int = 60
    failure_period_s: float = 60.0  # the time over which failure_limit refills
    jwt: tuple[JwtIssuerConfig, ...] = ()  # issuers whose JWTs are accepted as credentials
    introspection: tuple[IntrospectionConfig, ...] = ()  # endpoints that vouch for opaque tokens
    # Redis for change notices (pub/sub: revocations everywhere at once) and the replay cache of signed
    # requests shared by every worker and instance; None: ratelimit.redis; neither: polling, per-worker replays.
    redis: str | None = None
    redis_prefix: str = "sluice:auth:"  # channel <prefix>changes, keys <prefix>sig:<signature>
    redis_timeout_s: float = 0.25  # the most one auth call to Redis waits (a signature's claim, a publish)
    signature_fail_closed: bool = False  # Redis down: 503 to signed requests, not per-worker replay memory


class AnomalyConfig(_Section, frozen=True):
    """Per-key spikes against the key's own baseline (sluice.pipeline.anomaly, docs/abuse.md); auth on."""

    window_s: float = 60.0  # the short window whose requests and tokens are compared with the baseline
    baseline_s: float = 3600.0  # the EWMA's time constant: how slowly a key's baseline follows its traffic
    factor: float = 5.0  # a window over factor x the key's baseline is a spike
    warmup_s: float = 600.0  # a key first seen less than this long ago is never flagged (no baseline yet)
    min_requests: int = 30  # a window under this many requests is never a request spike
    min_tokens: int = 50_000  # a window under this many tokens (prompt plus completion) is never a token spike
    # "flag": metric and audit record only; "throttle": also 429 past the allowance while the spike lasts.
    action: Literal["flag", "throttle"] = "flag"
    max_keys: int = 100_000  # keys followed per worker; past it the least recently seen is forgotten


class ReputationConfig(_Section, frozen=True):
    """Client addresses refused (403) before auth, from files (sluice.auth.reputation, docs/abuse.md)."""

    files: tuple[str, ...]  # one address or CIDR a line; '#' starts a comment
    refresh_s: float = 60.0  # how often the files are checked (and reloaded when changed)


class PowConfig(_Section, frozen=True):
    """A proof-of-work challenge on routes that need no credential, under flood (sluice.pipeline.pow)."""

    threshold_rps: float = 50.0  # a route's requests per second (per worker) past which callers are challenged
    window_s: float = 10.0  # the window that rate is measured over
    difficulty: int = 16  # leading zero bits of sha256(challenge ":" counter)
    ttl_s: float = 120.0  # a challenge expires this long after it is issued; a solution is good once
    # HMAC key of the challenges; None: random per worker (then a solution is good only on the worker that
    # issued its challenge: set one with server.workers > 1, e.g. "${SLUICE_POW_SECRET}").
    secret: str | None = None
    max_solutions: int = 100_000  # solutions remembered (single use) per worker; past it, 429 until some expire


class AbuseConfig(_Section, frozen=True):
    """Abuse protection beyond rate limits and auth failure limits (docs/abuse.md); each absent: no stage."""

    anomaly: AnomalyConfig | None = None  # flag or throttle keys whose traffic spikes
    reputation: ReputationConfig | None = None  # refuse addresses listed in files
    pow: PowConfig | None = None  # a proof-of-work challenge under flood


class BreakerConfig(_Section, frozen=True):
    """Per deployment: closed -> open on a failure ratio over a rolling window or on consecutive failures;
    open -> half-open after open_s, where a few probes decide between closed and open again."""

    enabled: bool = False  # off: a failing deployment keeps its share of the traffic
    failure_ratio: float = 0.5  # open when failures / requests over window_s reaches this, with min_requests
    min_requests: int = 20  # the fewest requests in the window for failure_ratio to count
    window_s: float = 10.0  # the rolling window of failure_ratio
    consecutive_failures: int = 5  # or on this many failures in a row (0: off)
    open_s: float = 30.0  # how long an open breaker refuses before it lets probes through
    half_open_probes: int = 2  # probes let through at once when half-open; all must succeed to close


class HealthCheckConfig(_Section, frozen=True):
    """Active checks: a cheap request (the provider's model list) to each deployment on an interval."""

    interval_s: float = 0.0  # 0: off
    timeout_s: float = 2.0  # one check; past it the check failed
    only_unhealthy: bool = True  # check only deployments whose breaker is not closed


class DeadLetterConfig(_Section, frozen=True):
    """Requests that finally failed after their retries, kept for `sluice dlq list|replay|purge`."""

    enabled: bool = False  # off: a request that finally failed is not kept
    redis: bool = False  # a Redis stream (resilience.redis, else ratelimit.redis) instead of the store
    max_entries: int = 10_000  # the oldest beyond this are dropped
    max_age_s: float = 7 * 86400.0  # entries older than this are dropped
    max_body_bytes: int = 64 * 1024  # the (redacted) request body kept per entry, clipped


class ResilienceConfig(_Section, frozen=True):
    # Off by default, as in Envoy: a gateway that retries unasked multiplies an outage's load.
    retries: int = 0  # extra attempts after the first, each on another deployment when one exists
    # Statuses worth another attempt; connect errors and resets before any byte reached the client always are.
    retry_on: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504)
    backoff_base_s: float = 0.05  # exponential backoff with full jitter: uniform(0, min(max, base * 2^n))
    backoff_max_s: float = 2.0  # the longest wait between two attempts
    max_retry_after_s: float = 10.0  # an upstream Retry-After longer than this is not waited for
    retry_budget: float = 0.2  # retries may be at most this fraction of the recent requests, plus the floor
    retry_budget_floor: float = 10.0  # retries per second allowed beyond retry_budget
    retry_budget_window_s: float = 10.0  # how far back "recent" reaches
    timeout_s: float = 600.0  # the total deadline of a request, all attempts included
    timeout_header: str = "x-sluice-timeout"  # a caller's own total timeout in seconds (at most timeout_s)
    region: str | None = None  # this instance's region: the geo strategy's default for callers that name none
    redis: str | None = None  # for the dead-letter stream; None: ratelimit.redis
    breaker: BreakerConfig = BreakerConfig()  # circuit breakers per deployment
    health_check: HealthCheckConfig = HealthCheckConfig()  # active checks of deployments
    dead_letters: DeadLetterConfig = DeadLetterConfig()  # requests that failed for good, kept for replay


class StoreConfig(_Section, frozen=True):
    """Where keys, users, teams, roles and the audit log live (sluice.store)."""

    sqlite_path: str = "sluice.db"  # the embedded default: one file that the workers of one host share
    postgres_url: str | None = None  # postgresql://user:pass@host:port/db; when set, used instead of SQLite
    migrate_on_start: bool = True  # apply missing schema migrations when the gateway starts
    pool_size: int = 10  # PostgreSQL connections per worker process, at most
    timeout_s: float = 2.0  # bound on one store call (connect, wait for a lock, query)


class SecurityConfig(_Section, frozen=True):
    """What the gateway's own outbound URLs may point at (sluice.config.urls, docs/security.md)."""

    # Non-public networks (CIDRs) that providers' base URLs, OIDC issuers and JWKS, introspection and the
    # OTLP endpoint may be in or resolve into; any other private, loopback, link-local (cloud metadata),
    # unique-local or unspecified address is refused at load.  Loopback by default: the quickstart's mock.
    allow_private_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


class Config(_Section, frozen=True):
    """The whole file: these sections, each optional; a gateway needs models (and the providers they name)."""

    server: ServerConfig = ServerConfig()  # the listening socket, workers, body and connection limits
    upstream: UpstreamConfig = UpstreamConfig()  # connections to the providers: timeouts and pool sizes
    observability: ObservabilityConfig = ObservabilityConfig()  # logs, the access log, metrics, traces
    passthrough: PassthroughConfig = PassthroughConfig()  # the OpenAI endpoints sluice relays as they are
    ratelimit: RateLimitConfig = RateLimitConfig()  # rate limits and quotas (docs/ratelimits.md)
    store: StoreConfig = StoreConfig()  # the database of keys, users, teams, roles and audit (SQLite or PostgreSQL)
    auth: AuthConfig = AuthConfig()  # who may call: API keys, JWTs, introspection, roles (docs/auth.md)
    resilience: ResilienceConfig = ResilienceConfig()  # retries, deadlines, breakers, health checks, dead letters
    security: SecurityConfig = SecurityConfig()  # where the gateway's own outbound URLs may point
    abuse: AbuseConfig = AbuseConfig()  # anomaly detection, IP reputation, proof of work (docs/abuse.md)
    providers: dict[str, ProviderConfig] = {}  # name -> an upstream API and its keys
    models: dict[str, ModelConfig] = {}  # the model name callers send -> its targets and routing

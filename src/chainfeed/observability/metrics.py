"""Every ChainFeed metric, defined once. Names follow ../shared/SPEC.md exactly; no per-user labels.

Gauges that several processes report (``uvicorn --workers N``) declare how they combine in
prometheus-client's multiprocess mode: connection counts add up, Redis-derived gauges are the
same in every process so the max over the live ones is taken (``livemax``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTIVITIES_INGESTED",
    "ACTIVITIES_QUARANTINED",
    "ALCHEMY_SYNC_LAST_SUCCESS",
    "ALCHEMY_SYNC_PENDING",
    "ALCHEMY_SYNC_REQUESTS",
    "AUTH_LOGIN_RATE_LIMITED",
    "DEAD_LETTERS",
    "DELIVERY_LATENCY",
    "FEED_ITEMS_CREATED",
    "FEED_ITEMS_SUPPRESSED",
    "GAP_FILLS",
    "OUTBOX_BACKLOG",
    "REDIS_STREAM_CONSUMERS",
    "REDIS_STREAM_CONSUMER_LAG",
    "REDIS_STREAM_LENGTH",
    "REDIS_STREAM_PENDING",
    "REDIS_STREAM_RETRIES",
    "STAGE_DURATION",
    "WEBHOOK_REQUESTS",
    "WEBSOCKET_ACTIVE_CONNECTIONS",
    "WEBSOCKET_CONNECTION_DURATION",
    "WEBSOCKET_ERRORS",
    "WEBSOCKET_MESSAGES_SENT",
]

# Latency buckets from 0.5 ms to 10 s: the hot path lives in the low milliseconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- WebSocket -------------------------------------------------------------------------------
WEBSOCKET_ACTIVE_CONNECTIONS = Gauge(
    "websocket_active_connections", "Open WebSocket connections.", multiprocess_mode="livesum"
)
WEBSOCKET_MESSAGES_SENT = Counter("websocket_messages_sent_total", "Frames written to WebSocket clients.")
WEBSOCKET_CONNECTION_DURATION = Histogram(
    "websocket_connection_duration_seconds",
    "How long WebSocket connections stay open.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
GAP_FILLS = Counter(
    "websocket_gap_fills_total",
    "Reads of missed feed items from PostgreSQL by open connections: a push arrived ahead of the"
    " connection's position (gap), or the PUB/SUB connection came back (resync).",
    ["reason"],
)
for _reason in ("gap", "resync"):
    GAP_FILLS.labels(_reason)

WEBSOCKET_ERRORS = Counter(
    "websocket_errors_total",
    "WebSocket connections refused or closed for a fault (auth, slow_consumer, limit, origin, protocol).",
    ["type"],
)

# --- Redis stream ----------------------------------------------------------------------------
REDIS_STREAM_LENGTH = Gauge(
    "redis_stream_length", "Entries in the stream (XLEN).", ["stream"], multiprocess_mode="livemax"
)
REDIS_STREAM_PENDING = Gauge(
    "redis_stream_pending",
    "Entries delivered to the group but not yet acknowledged.",
    ["group"],
    multiprocess_mode="livemax",
)
REDIS_STREAM_CONSUMER_LAG = Gauge(
    "redis_stream_consumer_lag_seconds",
    "Age of the oldest entry the group has not yet acknowledged (0 when none).",
    multiprocess_mode="livemax",
)
REDIS_STREAM_RETRIES = Counter(
    "redis_stream_retry_count_total", "Stream entries claimed from an idle consumer and retried."
)
REDIS_STREAM_CONSUMERS = Gauge(
    "redis_stream_consumers",
    "Live consumers of the group: app instances whose heartbeat is fresh (each one consumes).",
    ["group"],
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Counter("redis_stream_dead_letters_total", "Stream entries moved to the dead-letter stream.")

# --- Ingest ----------------------------------------------------------------------------------
WEBHOOK_REQUESTS = Counter(
    "webhook_requests_total",
    "Alchemy webhook requests by outcome"
    " (accepted, bad_signature, malformed, too_large, timeout, unavailable).",
    ["outcome"],
)
ACTIVITIES_INGESTED = Counter("webhook_activities_total", "Alchemy activities ingested.", ["category"])
ACTIVITIES_QUARANTINED = Counter(
    "webhook_activities_quarantined_total",
    "Alchemy activities kept in quarantine (stored raw, not used) by reason; counted once per activity.",
    ["reason"],
)
FEED_ITEMS_CREATED = Counter("feed_items_created_total", "Feed items committed to PostgreSQL.")
FEED_ITEMS_SUPPRESSED = Counter(
    "feed_items_suppressed_total",
    "Feed items not made because their user was past CHAINFEED_FEED_ITEMS_PER_USER_MINUTE"
    " (the transfer is stored).",
)
OUTBOX_BACKLOG = Gauge(
    "outbox_backlog", "Committed feed items not yet published to the stream.", multiprocess_mode="livemax"
)

# --- Watch-list sync with Alchemy ------------------------------------------------------------
ALCHEMY_SYNC_PENDING = Gauge(
    "alchemy_sync_pending_changes",
    "Watched-address changes not yet acknowledged by Alchemy.",
    multiprocess_mode="livemax",
)
ALCHEMY_SYNC_REQUESTS = Counter(
    "alchemy_sync_requests_total",
    "Calls to Alchemy's address API by outcome (ok, retry, unauthorized, rejected).",
    ["outcome"],
)
ALCHEMY_SYNC_LAST_SUCCESS = Gauge(
    "alchemy_sync_last_success_timestamp_seconds",
    "Unix time of the last successful address update at Alchemy.",
    multiprocess_mode="livemax",
)

# --- Auth ------------------------------------------------------------------------------------
AUTH_LOGIN_RATE_LIMITED = Counter(
    "auth_login_rate_limited_total",
    "Logins and registrations refused with 429, by the limit that refused them (account, ip, registration).",
    ["scope"],
)
for _scope in ("account", "ip"):  # exported as 0 from the start: a panel or rate() sees no gap
    AUTH_LOGIN_RATE_LIMITED.labels(_scope)

# --- Latency ---------------------------------------------------------------------------------
STAGE_DURATION = Histogram(
    "chainfeed_stage_duration_seconds",
    "Duration of one pipeline stage (ingest, db_write, publish, consume, fanout, push).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
DELIVERY_LATENCY = Histogram(
    "chainfeed_delivery_latency_seconds",
    "End to end: stream entry time to frame written to the client.",
    buckets=_LATENCY_BUCKETS,
)

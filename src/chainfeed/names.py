"""Every Redis name and key prefix in one place, so that no module spells one by hand."""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONSUMER_GROUP",
    "DEFAULT_DEAD_LETTER_STREAM",
    "DEFAULT_STREAM",
    "FEED_ITEM_TYPE",
    "HIGH_WATER_KEY",
    "HUB_CHANNEL",
    "INSTANCES_KEY",
    "LOGIN_IP_PREFIX",
    "LOGIN_USER_PREFIX",
    "REGISTER_IP_PREFIX",
    "RESYNC_MARKER_CHANNEL",
    "USER_CHANNEL_PREFIX",
    "USER_CONNECTIONS_PREFIX",
    "user_channel",
    "user_connections_key",
]

DEFAULT_STREAM = "feed:stream"
DEFAULT_CONSUMER_GROUP = "feed:consumers"
DEFAULT_DEAD_LETTER_STREAM = "feed:stream:dead"

#: The frame ``type`` of a feed push.
FEED_ITEM_TYPE = "new_transaction"

#: PUB/SUB channel per user: every instance holding a tab of that user subscribes to it.
USER_CHANNEL_PREFIX = "feed:user:"

#: Sorted set per user of its open connections across instances (score = connect time).
USER_CONNECTIONS_PREFIX = "feed:conns:"

#: Sorted set of live app instances (score = last heartbeat): connections of a vanished instance
#: stop counting against their user's cap.
INSTANCES_KEY = "feed:instances"

#: PUB/SUB channel every instance subscribes to for as long as it runs (hub-wide control).
HUB_CHANNEL = "feed:hub"

#: Subscribed for a moment after the PUB/SUB connection came back: its confirmation, behind the
#: re-subscriptions, says every channel is live again (nothing is published on it).
RESYNC_MARKER_CHANNEL = "feed:hub:resubscribed"


#: The highest feed item id the relay has published (a restore of PostgreSQL is seen against it).
HIGH_WATER_KEY = "feed:high_water"

#: Failed-login counters (fixed windows) per account name and per client IP.
LOGIN_USER_PREFIX = "ratelimit:login:user:"
LOGIN_IP_PREFIX = "ratelimit:login:ip:"
#: Registrations per client IP in the current window (``domain.ratelimit``).
REGISTER_IP_PREFIX = "ratelimit:register:ip:"


def user_channel(user_id: int) -> str:
    """The PUB/SUB channel on which pushes for ``user_id`` travel between instances."""
    return f"{USER_CHANNEL_PREFIX}{user_id}"


def user_connections_key(user_id: int) -> str:
    """The key that tracks ``user_id``'s open connections on every instance."""
    return f"{USER_CONNECTIONS_PREFIX}{user_id}"

"""WebSocket hub: connections per user, bounded send queues, fan-out across instances (issue: delivery).

Placeholder until the delivery work lands.
"""

from __future__ import annotations

__all__ = ["Hub"]


class Hub:
    """Open connections of this process; placeholder."""

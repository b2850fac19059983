"""Stream consumer and WebSocket fan-out (issue: delivery).

Placeholder until the delivery work lands; :func:`start` is called by the runtime at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chainfeed.runtime import Runtime

__all__ = ["start"]


async def start(runtime: Runtime) -> None:
    """Start the consumer and the hub on ``runtime``; nothing yet."""

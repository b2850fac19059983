"""ChainFeed: real-time push of on-chain activity for the addresses a user follows.

The pipeline is ``webhook -> PostgreSQL (+ outbox) -> Redis Stream -> WebSocket hub``; see
docs/design.md for the picture, docs/architecture.md for the layout and docs/protocol.md for
the contract clients rely on.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

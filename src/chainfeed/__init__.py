"""ChainFeed: real-time push of on-chain activity for the addresses a user follows.

The pipeline is ``webhook -> PostgreSQL (+ outbox) -> Redis Stream -> WebSocket hub``; see
README.md for the picture and ../shared/SPEC.md for the product contract.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

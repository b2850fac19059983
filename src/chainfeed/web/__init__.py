"""The web edge: the only package that imports Litestar."""

from chainfeed.web.app import create_app

__all__ = ["create_app"]

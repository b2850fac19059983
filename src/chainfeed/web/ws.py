"""``GET /ws`` (issue: delivery). Placeholder: no routes yet."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

__all__ = ["ROUTES"]

ROUTES: list[ControllerRouterHandler] = []

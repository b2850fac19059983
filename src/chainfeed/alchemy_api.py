"""Client of Alchemy's Notify API for the webhook's address list.

Only the two calls the sync needs: ``PATCH`` (add/remove, idempotent) and ``PUT`` (replace the
whole list). Every call has a bounded timeout; the status (or ``None`` when no answer came) is
returned for :func:`chainfeed.domain.alchemy_sync.classify` to judge, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

__all__ = ["AlchemyApi"]


class AlchemyApi:
    """``X-Alchemy-Token``-authenticated calls on one webhook."""

    def __init__(self, base_url: str, *, token: str, webhook_id: str, timeout: float = 10.0) -> None:
        self.webhook_id = webhook_id
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"X-Alchemy-Token": token, "Content-Type": "application/json"},
            timeout=timeout,
        )

    async def update_addresses(self, add: Sequence[str], remove: Sequence[str]) -> tuple[int | None, str]:
        """``PATCH /update-webhook-addresses``; returns (status or None, short detail)."""
        body = {
            "webhook_id": self.webhook_id,
            "addresses_to_add": list(add),
            "addresses_to_remove": list(remove),
        }
        return await self._send("PATCH", body)

    async def replace_addresses(self, addresses: Sequence[str]) -> tuple[int | None, str]:
        """``PUT /update-webhook-addresses``: the webhook covers exactly ``addresses`` afterwards."""
        return await self._send("PUT", {"webhook_id": self.webhook_id, "addresses": list(addresses)})

    async def _send(self, method: str, body: Mapping[str, object]) -> tuple[int | None, str]:
        try:
            response = await self._client.request(method, "/update-webhook-addresses", json=body)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:200]
        return response.status_code, response.text[:200]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

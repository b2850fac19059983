"""The watch list: ``/api/addresses``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from chainfeed.domain.addresses import normalize_address, normalize_label
from chainfeed.storage.watchlist import add_address, list_addresses, remove_address
from chainfeed.web.deps import RuntimeDep, UserDep, provide_user
from chainfeed.web.openapi import error_responses

__all__ = ["AddressController"]


class NewAddress(msgspec.Struct):
    """Body of POST /api/addresses."""

    address: str
    label: str | None = None


class AddressController(Controller):
    """List, add (idempotent) and remove watched addresses."""

    path = "/api/addresses"
    dependencies = {"user": Provide(provide_user)}  # noqa: RUF012

    @get(responses=error_responses(401, 503))
    async def list(self, user: UserDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
        """The user's watch list."""
        return await list_addresses(runtime.pool, user.id)

    @post(
        status_code=201,
        responses={
            200: ResponseSpec(
                data_container=dict[str, Any], description="Already watched: the entry as it was."
            ),
            **error_responses(400, 401, 409, 413, 503),
        },
    )
    async def add(
        self, data: JSONBody[NewAddress], user: UserDep, runtime: RuntimeDep
    ) -> Response[dict[str, Any]]:
        """201 when newly watched, 200 when it already was; 409 over the per-user limit."""
        address = normalize_address(data.address)
        label = normalize_label(data.label)
        entry, created = await add_address(
            runtime.pool, user.id, address, label, limit=runtime.settings.max_addresses_per_user
        )
        if created:
            runtime.address_sync.wake()
        return Response(entry, status_code=201 if created else 200)

    @delete("/{address:str}", status_code=204, responses=error_responses(400, 401, 404, 503))
    async def remove(self, address: FromPath[str], user: UserDep, runtime: RuntimeDep) -> None:
        """Stop watching; 404 if it was not watched."""
        await remove_address(runtime.pool, user.id, normalize_address(address))
        runtime.address_sync.wake()

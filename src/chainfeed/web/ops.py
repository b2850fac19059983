"""Operations endpoints: liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.prometheus import PrometheusController

from chainfeed.observability.multiprocess import forget_dead_workers
from chainfeed.web.deps import RuntimeDep

__all__ = ["MetricsController", "healthz", "readyz"]


class MetricsController(PrometheusController):
    """``GET /metrics`` in the Prometheus text format (multiprocess-aware)."""

    path = "/metrics"

    @get(media_type=MediaType.TEXT, description="Prometheus text exposition format.")
    async def get(self) -> Response[bytes]:
        """The parent's handler, declared with the content type it really sends (not JSON); a
        worker that died no longer counts in the live gauges."""
        forget_dead_workers()
        response: Response[bytes] = await PrometheusController.get.fn(self)
        return response


class Readiness(msgspec.Struct):
    """The body of ``/readyz``: each check ``ok`` or ``failing``; on 503 the failing ones named."""

    status: str
    checks: dict[str, str]
    failing: list[str] | None = None


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and serving; says nothing about its dependencies."""
    return {"status": "ok"}


@get(
    "/readyz",
    responses={
        200: ResponseSpec(
            data_container=Readiness, description="Every part answers.", generate_examples=False
        ),
        503: ResponseSpec(
            data_container=Readiness,
            description="A part does not answer; `failing` names it.",
            generate_examples=False,
        ),
    },
)
async def readyz(runtime: RuntimeDep) -> Response[dict[str, object]]:
    """200 when every registered part answers; 503 naming each part that does not."""
    names = list(runtime.checks)
    results = await asyncio.gather(*(runtime.checks[name]() for name in names), return_exceptions=True)
    failing = {name: type(result).__name__ for name, result in zip(names, results, strict=True) if result}
    status = {name: ("ok" if name not in failing else "failing") for name in names}
    if failing:
        return Response(
            {"status": "unavailable", "failing": sorted(failing), "checks": status}, status_code=503
        )
    return Response({"status": "ok", "checks": status}, status_code=200)

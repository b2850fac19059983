"""Schemathesis against the app's own OpenAPI schema (/schema/openapi.json): generated requests to
every operation, authenticated, never get a 5xx, answer within a second, and every answer is one
the schema declares: its status code, its content type and its body's schema
(``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``).
Error answers are ``{"error": ...}`` (``chainfeed.web.openapi.ErrorBody``), Litestar's own 400
included, and each route declares the error statuses it can give.

The app runs in a child process (schemathesis' client is synchronous: it must not share the test's
event loop). Bounded for CI: a fixed seed, 25 examples per operation and phase, one worker.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from chainfeed.config import Settings
from tests.conftest import RunningApp
from tests.delivery_support import served_in_subprocess

pytestmark = pytest.mark.timeout(180)


#: The error statuses SPEC's "HTTP API" table (and the error mapping) give each operation.
_DECLARED_ERRORS = {
    ("post", "/api/auth/register"): {"400", "409", "413", "429", "503"},
    ("post", "/api/auth/login"): {"400", "401", "413", "429", "503"},
    ("post", "/api/auth/refresh"): {"401", "503"},
    ("get", "/api/me"): {"401", "503"},
    ("get", "/api/addresses"): {"401", "503"},
    ("post", "/api/addresses"): {"400", "401", "409", "413", "503"},
    ("delete", "/api/addresses/{address}"): {"400", "401", "404", "503"},
    ("get", "/api/feed"): {"400", "401", "503"},
    ("post", "/webhooks/alchemy"): {"400", "401", "408", "413", "503"},
}


async def test_each_operation_declares_its_error_answers_as_error_bodies(app: RunningApp) -> None:
    """Every error status a route can give is in the schema with the ``{"error": ...}`` body,
    Litestar's validation 400 included; /readyz declares its 503 and /metrics its text format."""
    schema = (await app.http.get("/schema/openapi.json")).json()
    error_body = schema["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"]
    for (method, path), statuses in _DECLARED_ERRORS.items():
        responses = schema["paths"][path][method]["responses"]
        errors = {status for status in responses if status >= "400"}
        assert errors == statuses, (method, path)
        for status in errors:
            content = responses[status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert schema["paths"]["/api/addresses"]["post"]["responses"].keys() >= {"200", "201"}
    assert schema["paths"]["/readyz"]["get"]["responses"].keys() == {"200", "503"}
    assert schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


async def test_a_feed_cursor_beyond_bigint_is_400_not_500(app: RunningApp) -> None:
    """Found by the fuzzing below: ``before`` over PostgreSQL's bigint overflowed in the driver."""
    token = (await app.register())["access_token"]
    for before, status in ((2**63 - 1, 200), (2**63, 400), (10**24, 400)):
        response = await app.http.get("/api/feed", params={"before": before}, headers=app.auth(token))
        assert response.status_code == status, before
    assert "error" in response.json()


_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


async def test_generated_requests_get_only_declared_answers_and_no_server_error(
    settings: Settings, tmp_path: Path
) -> None:
    async with served_in_subprocess(settings, tmp_path / "app.log") as (_process, base_url):
        async with httpx.AsyncClient(base_url=base_url) as http:
            body = (
                await http.post(
                    "/api/auth/register", json={"username": "fuzzer", "password": "correct-horse"}
                )
            ).json()
        cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        assert cli is not None
        process = await asyncio.create_subprocess_exec(
            cli,
            "run",
            f"{base_url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {body['access_token']}",
            "--checks",
            ",".join(_CHECKS),
            "--max-response-time",
            "1",
            "--max-examples",
            "25",
            "--seed",
            "20261127",
            "--workers",
            "1",
            "--request-timeout",
            "5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-5000:]
    assert "Tested:" in text
    print(text[-1500:])

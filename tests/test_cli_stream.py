"""Operator commands against a real Redis: ``stream info``, ``dlq list|replay|purge``, unreachable Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from redis.asyncio import Redis

from chainfeed.devtools.embedded import free_port

STREAM, GROUP, DEAD = "feed:stream", "feed:consumers", "feed:stream:dead"


async def _cli(redis_url: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env["CHAINFEED_REDIS_URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chainfeed", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_stream_info_reports_length_pending_consumers_and_lag(
    migrated: tuple[str, str], redis: Redis
) -> None:
    ids = [await redis.xadd(STREAM, {"user_id": "1", "type": "test", "payload": "{}"}) for _ in range(5)]
    await redis.xgroup_create(STREAM, GROUP, id="0")
    await redis.xreadgroup(GROUP, "worker-a", {STREAM: ">"}, count=2)  # 2 pending, 3 undelivered
    await redis.xadd(DEAD, {"user_id": "1", "original_id": ids[0], "deliveries": "3", "error": "boom"})

    code, out, err = await _cli(migrated[1], "stream", "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["length"] == 5
    assert info["first_entry_id"] == ids[0]
    assert info["last_entry_id"] == ids[-1]
    assert info["dead_letters"] == 1
    (group,) = info["groups"]
    assert group["name"] == GROUP
    assert group["pending"] == 2
    assert group["oldest_pending_id"] == ids[0]
    assert group["lag_seconds"] >= 0
    assert [c["name"] for c in group["consumers"]] == ["worker-a"]
    assert group["consumers"][0]["pending"] == 2

    code, text, _ = await _cli(migrated[1], "stream", "info")
    assert code == 0
    assert "length        5" in text
    assert "worker-a" in text
    assert "lag" in text

    # All acknowledged and nothing undelivered: lag is 0.
    await redis.xreadgroup(GROUP, "worker-a", {STREAM: ">"}, count=10)
    await redis.xack(STREAM, GROUP, *ids)
    _, out, _ = await _cli(migrated[1], "stream", "info", "--json")
    assert json.loads(out)["groups"][0]["lag_seconds"] == 0


async def test_dlq_list_replay_and_purge(migrated: tuple[str, str], redis: Redis) -> None:
    letters = []
    for n in range(3):
        fields = {"user_id": str(n), "type": "test", "payload": "{}"}
        meta = {"original_id": f"1-{n}", "deliveries": "3", "error": "bad payload"}
        letters.append(await redis.xadd(DEAD, fields | meta))
    code, out, _ = await _cli(migrated[1], "dlq", "list", "--json")
    assert code == 0
    assert [entry["id"] for entry in json.loads(out)] == letters
    code, text, _ = await _cli(migrated[1], "dlq", "list")
    assert "error: bad payload" in text

    code, out, err = await _cli(migrated[1], "dlq", "replay", "--id", letters[1])
    assert code == 0, err
    replayed = await redis.xrange(STREAM)
    assert [fields for _, fields in replayed] == [{"user_id": "1", "type": "test", "payload": "{}"}]
    assert await redis.xlen(DEAD) == 2

    code, _, err = await _cli(migrated[1], "dlq", "replay", "--id", "9-9")
    assert code == 1
    assert "no dead letter with id 9-9" in err

    code, out, err = await _cli(migrated[1], "dlq", "replay", "--all")
    assert code == 0
    assert "replayed 2" in out
    assert "2/2" in err  # the progress bar
    assert await redis.xlen(STREAM) == 3

    await redis.xadd(DEAD, {"user_id": "9", "original_id": "1-9", "deliveries": "3", "error": "x"})
    code, _, err = await _cli(migrated[1], "dlq", "purge")  # no terminal, no --yes: refuses
    assert code == 1
    assert await redis.xlen(DEAD) == 1
    code, out, _ = await _cli(migrated[1], "dlq", "purge", "--yes")
    assert code == 0
    assert "purged 1" in out
    assert await redis.xlen(DEAD) == 0


async def test_unreachable_redis_is_one_clear_line(migrated: tuple[str, str]) -> None:
    code, _, err = await _cli(f"redis://127.0.0.1:{free_port()}/0", "stream", "info")
    assert code == 1
    assert err.strip().count("\n") == 0
    assert err.startswith("chainfeed: cannot reach Redis")

"""The asyncio callbacks are typed so that overrides written as plain ``def``
and as ``async def`` both pass ``mypy --strict``, as the documentation allows
both; the send methods type-check with and without ``await``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PACKAGE_PARENT

SAMPLE = '''
from typing import Optional, Union

from pystrands import AsyncPyStrandsClient, ConnectionRequestContext, Context, PresenceStats, PyStrands


class Plain(AsyncPyStrandsClient):
    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        return request.header("Authorization") == "Bearer ok"

    def on_connect(self, context: Context) -> None:
        self.send_private_message(context.client_id, "welcome")

    def on_message(self, message: Union[str, bytes], context: Context) -> None:
        self.send_room_message(context.room_id, message)

    def on_disconnect(self, context: Context) -> None:
        pass

    def on_error(self, error: str, context: Context) -> None:
        pass


class Async(AsyncPyStrandsClient):
    async def on_connection_request(self, request: ConnectionRequestContext) -> Optional[bool]:
        request.context.room_id = "lobby"
        return None

    async def on_new_connection(self, context: Context) -> None:
        await self.send_private_message(context.client_id, "welcome")

    async def on_message(self, message: Union[str, bytes], context: Context) -> None:
        reached: Optional[int] = await self.send_room_message(context.room_id, message, ack=True)
        stats: PresenceStats = await self.presence_stats(context.room_id)
        print(reached, stats.clients)

    async def on_disconnect(self, context: Context) -> None:
        await self.flush()

    async def on_error(self, error: str, context: Context) -> None:
        await self.disconnect()


async def main() -> None:
    app = PyStrands()

    @app.on_message
    async def said(message: Union[str, bytes], context: Context) -> None:
        app.broadcast(message)
        await app.send_private_message(context.client_id, message)

    async with Plain() as plain, Async() as other:
        assert plain.connected and other.connected
    await app.serve(handle_signals=False)
'''


def test_plain_and_async_overrides_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    sample = tmp_path / "sample_backend.py"
    sample.write_text(SAMPLE)
    env = dict(os.environ)
    if not os.environ.get("PYSTRANDS_TEST_INSTALLED"):
        env["MYPYPATH"] = PACKAGE_PARENT  # the source tree under test
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
         str(sample)],
        env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout

"""``ropd-tui --serve`` serves the UI to browsers through textual-serve (a real HTTP server here)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

from ropd_tui.cli import serve_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_tab_runs_this_ui_on_the_same_store(tmp_path):
    argv = shlex.split(serve_command(str(tmp_path / "s.db")))
    assert argv[0] == sys.executable and argv[1].endswith("entrypoint.py")  # the cwd cannot shadow ropd_tui
    assert argv[3:] == ["ropd_tui.cli", "--store", str((tmp_path / "s.db").resolve())]
    assert "--headless" not in argv


async def _first_screen(port: int) -> bytes:
    """What a browser tab receives: the app process's output over the websocket."""
    import asyncio
    import json

    import aiohttp

    got = b""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send_str(json.dumps(["resize", {"width": 100, "height": 30}]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while b"served-run" not in got and loop.time() < deadline:
                try:
                    msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got += msg.data
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    got += msg.data.encode()
                else:
                    break
    return got


def test_serve_answers_http_and_each_tab_gets_the_app(tmp_path):
    import asyncio

    from engine.store import RunStore

    store = RunStore(tmp_path / "s.db")
    store.create_run("served-run", "embedded", {})
    store.close()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ropd_tui.cli", "--store", str(tmp_path / "s.db"), "--serve",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    page = resp.read().decode("utf-8", "replace")
                    status = resp.status
                break
            except OSError:
                time.sleep(0.3)
        assert page is not None, proc.stdout.read().decode() if proc.poll() is not None else "no answer"
        assert status == 200
        assert "ropd-tui" in page  # the page title
        assert f"127.0.0.1:{port}" in page  # the websocket the browser opens to start its own app process
        assert b"served-run" in asyncio.run(_first_screen(port))  # a tab's own app process shows the store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

"""`ropd-tui --headless judge serve`: vLLM is not installed here, so the server is replaced by a fake
command (ROPD_VLLM_CMD) that behaves like one: answers /v1/models over real HTTP, exits early, or hangs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ropd_tui.cli import main

FAKE_SERVER = textwrap.dedent('''
    import argparse, json, os, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--host"); p.add_argument("--port", type=int)
    p.add_argument("--served-model-name"); p.add_argument("--gpu-memory-utilization")
    p.add_argument("--max-model-len", type=int)
    a, extra = p.parse_known_args()
    open(os.environ["FAKE_PIDFILE"], "w").write(f"{os.getpid()} {' '.join(extra)}")
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "crash":
        print("RuntimeError: CUDA out of memory", flush=True); sys.exit(3)
    if mode == "hang":
        time.sleep(120); sys.exit(0)
    time.sleep(0.5)  # "loading the model"
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            card = {"id": a.served_model_name, "object": "model"}
            if a.max_model_len:  # vLLM reports the context it runs with
                card["max_model_len"] = a.max_model_len
            body = json.dumps({"object": "list", "data": [card]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body)
        def log_message(self, *args): pass
    print("INFO: Uvicorn running", flush=True)
    HTTPServer((a.host, a.port), H).serve_forever()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    model = tmp_path / "judge-model"
    model.mkdir()
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("ROPD_VLLM_CMD", f"{sys.executable} {script}")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    return model, pidfile


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_vllm_not_installed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ROPD_VLLM_CMD", raising=False)
    rc = main(["--headless", "judge", "serve", "--model", "some-org/judge-8b", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert rc == 3
    assert "vLLM is not installed" in err and "--vllm-cmd" in err
    assert "Traceback" not in err


def test_missing_model_dir_and_busy_port(tmp_path, capsys):
    assert main(["--headless", "judge", "serve", "--model", str(tmp_path / "nope")]) == 2
    assert "judge model not found" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["--headless", "judge", "serve", "--model", str(tmp_path), "--port", str(port),
                   "--vllm-cmd", "true"])
    assert rc == 3
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_server_exiting_early_reports_its_output(fake_vllm, monkeypatch, capsys):
    model, _ = fake_vllm
    monkeypatch.setenv("FAKE_MODE", "crash")
    rc = main(["--headless", "judge", "serve", "--model", str(model), "--port", str(free_port())])
    err = capsys.readouterr().err
    assert rc == 3
    assert "exited with code 3 before answering" in err
    assert "CUDA out of memory" in err


def test_server_that_never_answers_times_out_and_is_stopped(fake_vllm, monkeypatch, capsys):
    model, pidfile = fake_vllm
    monkeypatch.setenv("FAKE_MODE", "hang")
    rc = main(["--headless", "judge", "serve", "--model", str(model), "--port", str(free_port()),
               "--wait-timeout", "2"])
    assert rc == 3
    assert "did not answer" in capsys.readouterr().err
    pid = int(pidfile.read_text().split()[0])
    assert not alive(pid)


def test_serve_waits_prints_config_and_stops_on_ctrl_c(fake_vllm):
    model, pidfile = fake_vllm
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ropd_tui.cli", "--headless", "judge", "serve", "--model", str(model),
         "--port", str(port), "--gpu-memory-utilization", "0.5", "--", "--max-num-seqs", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("vLLM started without --api-key"):
                break
        out = "\n".join(lines)
        base = f"http://127.0.0.1:{port}/v1"
        assert f"judge server ready: {base} (model: judge-model)" in out
        assert f"  rubricator: {{model: judge-model, base_url: {base}}}" in out
        assert f"judge.verifier.base_url={base}" in out
        server_pid, extra = pidfile.read_text().split(" ", 1)
        assert extra == "--max-num-seqs 64"  # arguments after -- reach vLLM
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "judge server stopped" in rest
    deadline = time.monotonic() + 10
    while alive(int(server_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(int(server_pid))


def serve_until_ready(model, port, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ropd_tui.cli", "--headless", "judge", "serve", "--model", str(model),
         "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("vLLM started without --api-key"):
                break
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return "\n".join(lines)


def test_serve_with_max_model_len_prints_settings_that_fit_it(fake_vllm):
    """--max-model-len 2048 used to print no max_tokens while the default 4096 exceeded it."""
    import yaml

    from engine.config import build_config
    from engine.judging.server_limits import CHARS_PER_TOKEN

    model, _ = fake_vllm
    out = serve_until_ready(model, free_port(), "--max-model-len", "8192")
    assert "context: 8192 tokens per request" in out
    block = out[out.index("judge:\n"):out.index("as overrides:")]
    cfg = build_config(yaml.safe_load(block))
    for role in (cfg.judge.rubricator, cfg.judge.verifier):
        assert role.max_tokens and role.max_tokens <= 8192 // 4 and role.response_format == "json_schema"
    s = cfg.scorer
    # the fullest prompt (answers at the budget, the template and a question) fits beside max_tokens
    prompt_tokens = (16 * s.answer_char_budget + 4000) / CHARS_PER_TOKEN
    assert prompt_tokens + cfg.judge.verifier.max_tokens <= 8192
    assert s.answer_char_budget >= 500 and s.verifier_chunk_size >= 1
    overrides = out[out.index("as overrides: ") + len("as overrides: "):].splitlines()[0].split()
    assert f"judge.verifier.max_tokens={cfg.judge.verifier.max_tokens}" in overrides
    assert f"scorer.answer_char_budget={s.answer_char_budget}" in overrides
    assert "warning" not in out


def test_serve_with_a_tiny_context_warns(fake_vllm):
    model, _ = fake_vllm
    out = serve_until_ready(model, free_port(), "--max-model-len", "2048")
    assert "max_tokens: 512" in out and "max_tokens=4096" not in out
    assert "warning: a 2048-token context leaves only about" in out and "--max-model-len 8192" in out

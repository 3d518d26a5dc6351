"""Bad input and a hostile environment: each gives one clear message, the documented exit code, and
loses nothing. Config-file and override cases are in tests/test_config.py.

Read-only and full file systems are real tmpfs mounts where this test may mount them (root), and
faults injected at the OS boundary (``os.fsync`` raising ENOSPC) everywhere else.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import fixtures_store
from engine.store import RunStore, StoreReadOnlyError
from engine.store.db import store_write_error
from loopback_server import LoopbackJudgeServer
from ropd_tui.cli import main as cli_main
from ropd_tui.commands import score as score_cmd

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo" / "groups.jsonl"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli_main(["--headless", *argv])
    return rc, out.getvalue(), err.getvalue()


def llm_args(srv) -> list[str]:
    args = ["judge.mode=llm", "judge.max_retries=0"]
    for role in ("rubricator", "verifier"):
        args += [f"judge.{role}.base_url={srv.base_url}", f"judge.{role}.model=loopback-judge"]
    return args


@contextmanager
def tmpfs(path: Path, size: str = "20m"):
    """A real tmpfs at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs: Path) -> None:
    with open(fs / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


# -- score: input and output files -------------------------------------------------------------

def test_score_input_that_is_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run("score", "--input", str(tmp_path), "--out", "o.jsonl")
    assert rc == 2 and f"--input {tmp_path} is a directory, not a file" in err and "Traceback" not in err


def test_score_input_that_is_not_utf8_names_line_and_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "in.jsonl"
    good = json.dumps({"prompt": "What is 2 + 2?", "rollouts": ["4"]}).encode()
    bad.write_bytes(good + b"\n" + b'{"prompt": "caf\xe9", "rollouts": ["x"]}\n')
    rc, out, err = run("score", "--input", str(bad), "--out", "o.jsonl")
    assert rc == 2
    assert f"{bad}: line 2 is not UTF-8 text: byte 0xe9 at column 16 (byte offset {len(good) + 16} in the file)" in err


def test_score_out_that_is_a_directory_is_reported_before_judging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outdir").mkdir()
    with LoopbackJudgeServer() as srv:
        rc, out, err = run("score", "--input", str(DEMO), "--out", "outdir", *llm_args(srv))
        sent = len(srv.requests)
    assert rc == 2 and "--out outdir is a directory" in err and sent == 0


def test_score_out_on_a_full_disk_is_reported_before_judging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with LoopbackJudgeServer() as srv:
        rc, out, err = run("score", "--input", str(DEMO), "--out", "o.jsonl", *llm_args(srv))
        sent = len(srv.requests)
    assert rc == 2 and "--out o.jsonl cannot be written: no space left on device" in err
    assert "the disk is full" in err and sent == 0


def test_score_out_on_a_read_only_file_system(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tmpfs(tmp_path / "ro") as fs:
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        rc, out, err = run("score", "--input", str(DEMO), "--out", str(fs / "o.jsonl"))
    assert rc == 2 and "cannot be written: read-only file system" in err and "file system is read-only" in err


def test_score_results_are_kept_when_the_output_fails_after_judging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = score_cmd.write_jsonl_atomic
    out = tmp_path / "o.jsonl"

    def disk_fills_up(path, records):
        if Path(path) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, records)

    monkeypatch.setattr(score_cmd, "write_jsonl_atomic", disk_fills_up)
    rc, stdout, err = run("--store", str(tmp_path / "runs" / "ropd.db"), "score", "--input", str(DEMO),
                          "--out", str(out))
    assert rc == 1 and not out.exists()
    assert f"could not write {out}" in err and "the disk is full" in err
    kept = list((tmp_path / "runs").glob("scores-o.*.jsonl"))
    assert len(kept) == 1 and f"kept in {kept[0]}" in err and str(kept[0]) in stdout
    records = [json.loads(line) for line in kept[0].read_text().splitlines()]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)


# -- other commands --------------------------------------------------------------------------------

def test_invalid_run_name_is_reported_before_any_preflight_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run("train", "--config", str(ROOT / "configs" / "demo.yaml"), "--name", "my run!")
    assert rc == 2 and out == "" and "invalid --name 'my run!'" in err and "letters, digits" in err


def test_binary_teacher_index_is_not_called_an_interrupted_write(tmp_path):
    binary = tmp_path / "index.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, out, err = run("index", "show", str(binary))
    assert rc == 2 and "is not a teacher index: it holds binary data" in err and "interrupted" not in err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9", "answers": ["x"]}\n')
    rc, out, err = run("index", "show", str(latin))
    assert rc == 2 and "line 1 is not UTF-8 text (byte 0xe9" in err


def test_piping_into_head_is_quiet(tmp_path):
    store = tmp_path / "runs" / "ropd.db"
    fixtures_store.build_store(store, fixtures_store.DEFAULT_RUNS[:1], groups=10)
    for cmd in (["export", "demo-baseline", "--what", "verdicts", "--format", "csv"], ["status", "demo-baseline"]):
        res = subprocess.run(f"{sys.executable} -m ropd_tui.cli --headless --store {store} {' '.join(cmd)} | head -n 1; "
                             "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr and res.stderr == "", res.stderr
        assert res.returncode in (0, 141) and len(res.stdout.splitlines()) == 1


# -- the run store on a read-only or full file system -------------------------------------------

def build_with_a_dead_run(store: Path) -> None:
    """The fixture store, whose "running" run's process has gone (so a reader finds it lost)."""
    ids = fixtures_store.build_store(store)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with RunStore(store) as s:
        s.update_run(ids["verl-k1"], pid=gone.pid, proc_start=None)


def read_commands(store: Path) -> list[list[str]]:
    s = ["--store", str(store)]
    return [s + ["runs"], s + ["status", "verl-k1"], s + ["status", "demo-lr-high"], s + ["logs", "demo-lr-high"],
            s + ["metrics", "demo-baseline", "--last", "2"], s + ["export", "demo-baseline", "--what", "answers"],
            s + ["templates", "list"]]


def check_reads_work_and_writes_say_why(store: Path, why: str) -> None:
    for argv in read_commands(store):
        rc, out, err = run(*argv)
        assert rc == 0 and out and "Traceback" not in err, (argv, err)
    rc, out, err = run("--store", str(store), "runs")
    assert "lost" in out  # the dead "running" run is reported even though the store cannot record it
    rc, out, err = run("--store", str(store), "delete", "demo-stopped", "--yes")
    assert rc == 2 and why in err and "reading commands (runs, status, logs, metrics, export) still work" in err


def test_store_on_a_read_only_file_system_is_readable(tmp_path):
    with tmpfs(tmp_path / "ro") as fs:
        build_with_a_dead_run(fs / "runs" / "ropd.db")
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        check_reads_work_and_writes_say_why(fs / "runs" / "ropd.db", "was opened for reading only (it is read-only)")


def test_store_on_a_full_disk_is_readable(tmp_path):
    with tmpfs(tmp_path / "full", size="30m") as fs:
        build_with_a_dead_run(fs / "runs" / "ropd.db")
        fill(fs)
        check_reads_work_and_writes_say_why(fs / "runs" / "ropd.db", "(the disk is full)")


def test_database_or_disk_is_full_gets_the_disk_hint(tmp_path):
    import sqlite3

    err = store_write_error(tmp_path / "ropd.db", sqlite3.OperationalError("database or disk is full"))
    assert isinstance(err, StoreReadOnlyError) and "the disk is full" in str(err) and "df -h" in str(err)
    assert "pass --store" not in str(err)


@pytest.mark.parametrize("argv, words", [
    (["index", "build", "--prompts", "{d}", "--out", "i.jsonl", "--teacher-model", "m"], "--prompts {d} is a directory"),
    (["index", "build", "--prompts", "{latin}", "--out", "i.jsonl", "--teacher-model", "m"],
     "line 1 is not UTF-8 text: byte 0xe9"),
    (["index", "build", "--prompts", "{latin}", "--out", "{d}", "--teacher-model", "m"], "--out {d} is a directory"),
    (["index", "show", "{d}"], "teacher index {d} is a directory, not a file"),
    (["--store", "{d}", "runs"], "the run store {d} is a directory"),
])
def test_directories_and_bytes_where_files_belong(tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    fmt = {"d": str(tmp_path / "d"), "latin": str(tmp_path / "latin.jsonl")}
    rc, out, err = run(*[a.format(**fmt) for a in argv])
    assert rc == 2 and words.format(**fmt) in err and "Traceback" not in err, err

"""Bad input, tried as a user would: each case runs the real ``ropd-tui --headless`` command in a scratch
folder and prints its exit code and the message it gave (the first ``error:`` line and its hint). Prints,
asserts nothing; the tests that pin each message are in tests/test_bad_input.py, test_config.py,
test_score_cmd.py and test_score_faults.py. A traceback in any output is flagged.

Usage: ``python bench/bad_inputs.py [--markdown]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixtures(d: Path) -> dict[str, str]:
    shutil.copytree(ROOT / "configs", d / "configs")
    shutil.copytree(ROOT / "prompts", d / "prompts")
    (d / "adir").mkdir()
    (d / "latin.jsonl").write_bytes(b'{"prompt": "2+2?", "rollouts": ["4"]}\n{"prompt": "caf\xe9", "rollouts": ["x"]}\n')
    (d / "broken.jsonl").write_text('{"prompt": "2+2?", "rollouts": ["4"]}\n{"prompt": "3+3?", "rollouts": [\n')
    (d / "good.jsonl").write_text(json.dumps({"prompt": "What is 2+2?", "rollouts": ["4", "5"], "ground_truth": "4"})
                                  + "\n")
    (d / "bad.yaml").write_text("trainer:\n  steps: [1, 2\n")
    (d / "unknown.yaml").write_text("trainer:\n  stepz: 3\n")
    (d / "binary.jsonl").write_bytes(b"\x00\x01\x02SQLite format 3\x00" * 20)
    (d / "notastore.db").write_text("hello, I am not SQLite\n")
    (d / "verifier_bad.txt").write_text("Judge {answers} against {no_such_placeholder}\n")
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    return {"dead": dead}


def cases(d: Path, fx: dict[str, str]) -> list[tuple[str, list[str]]]:
    demo = "configs/demo.yaml"
    judge = [f"judge.rubricator.base_url={fx['dead']}", f"judge.verifier.base_url={fx['dead']}",
             "judge.rubricator.model=m", "judge.verifier.model=m", "scorer.k=0"]
    return [
        ("--config is a directory", ["train", "--config", "adir"]),
        ("--config does not exist", ["train", "--config", "missing.yaml"]),
        ("config file is not valid YAML", ["train", "--config", "bad.yaml"]),
        ("unknown key in a config file", ["train", "--config", "unknown.yaml"]),
        ("unknown key on the command line", ["train", "--config", demo, "trainer.lernrate=1e-5"]),
        ("negative learning rate", ["train", "--config", demo, "trainer.learning_rate=-1"]),
        ("negative answer_char_budget", ["train", "--config", demo, "scorer.answer_char_budget=-5"]),
        ("a value of the wrong type", ["train", "--config", demo, "trainer.steps=abc"]),
        ("an override without '='", ["train", "--config", demo, "steps5"]),
        ("judge.concurrency=0", ["train", "--config", demo, "judge.concurrency=0"]),
        ("invalid run name", ["train", "--config", demo, "--name", "my run!"]),
        ("task file not set", ["train", "--config", demo, "task.name=file"]),
        ("task file missing", ["train", "--config", demo, "task.name=file", "task.train_file=nope.jsonl"]),
        ("score: --input is a directory", ["score", "--input", "adir", "--out", "o.jsonl"]),
        ("score: --input does not exist", ["score", "--input", "nope.jsonl", "--out", "o.jsonl"]),
        ("score: --input not UTF-8", ["score", "--input", "latin.jsonl", "--out", "o.jsonl"]),
        ("score: --input has a cut-off JSON line", ["score", "--input", "broken.jsonl", "--out", "o.jsonl"]),
        ("score: --out is a directory", ["score", "--input", "good.jsonl", "--out", "adir"]),
        ("score: --out is the input", ["score", "--input", "good.jsonl", "--out", "good.jsonl"]),
        ("score: teacher index missing", ["score", "--input", "good.jsonl", "--out", "o.jsonl"]),
        ("score: judge refuses connections", ["score", "--input", "good.jsonl", "--out", "o.jsonl", *judge]),
        ("score: broken verifier template", ["score", "--input", "good.jsonl", "--out", "o.jsonl", *judge,
                                             "templates.verifier=verifier_bad.txt"]),
        ("index show: a directory", ["index", "show", "adir"]),
        ("index show: a binary file", ["index", "show", "binary.jsonl"]),
        ("index show: missing file", ["index", "show", "nope.jsonl"]),
        ("index build: --prompts not UTF-8", ["index", "build", "--prompts", "latin.jsonl", "--out", "i.jsonl",
                                              "--teacher-model", "m"]),
        ("--store is a directory", ["--store", "adir", "runs"]),
        ("--store is not SQLite", ["--store", "notastore.db", "runs"]),
        ("status of an unknown run", ["--store", "runs/ropd.db", "status", "nosuchrun"]),
        ("replay of an unknown run", ["--store", "runs/ropd.db", "replay", "nosuchrun"]),
        ("export in an unknown format", ["--store", "runs/ropd.db", "export", "x", "--format", "xml"]),
        ("templates validate: broken file", ["templates", "validate", "verifier_bad.txt"]),
    ]


def message(out: str, err: str) -> str:
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.lower().startswith(("error", "ropd-tui")) or "error:" in ln:
            nxt = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("hint") else ""
            return ln + (f" / {nxt}" if nxt else "")
    return lines[-1] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    exe = shutil.which("ropd-tui") or str(Path(sys.executable).with_name("ropd-tui"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fx = fixtures(d)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
        subprocess.run([exe, "--headless", "--store", "runs/ropd.db", "runs"], cwd=d, capture_output=True, env=env)
        tracebacks = 0
        for i, (what, argv) in enumerate(cases(d, fx), 1):
            res = subprocess.run([exe, "--headless", *argv], cwd=d, capture_output=True, text=True, timeout=300,
                                 env=env)
            tb = "Traceback" in res.stdout + res.stderr
            tracebacks += tb
            msg = message(res.stdout, res.stderr).replace(str(d) + "/", "").replace(str(d), ".")
            if args.markdown:
                print(f"| {i} | {what} | {res.returncode} | {msg[:300].replace('|', '/')}{' TRACEBACK' if tb else ''} |")
            else:
                print(f"{i:2d}. {what}: exit {res.returncode}{' TRACEBACK' if tb else ''}\n    {msg[:300]}")
        print(f"\n{i} bad inputs, {tracebacks} with a traceback")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

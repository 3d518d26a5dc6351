"""``ropd-tui --headless judge serve``: a local OpenAI-compatible judge server (vLLM) on a GPU.

Starts ``python -m vllm.entrypoints.openai.api_server`` with sensible defaults, waits until
``GET /v1/models`` answers, prints the base URL and the run-config lines that point the rubricator and
the verifier at it, and stays in the foreground until Ctrl-C (or SIGTERM), which stops the server.
The lines carry settings that fit the server's context (``max_model_len`` as vLLM reports it, or
``--max-model-len``): ``max_tokens``, ``response_format: json_schema`` (guided decoding), and the
``scorer.answer_char_budget`` / ``verifier_chunk_size`` that let the fullest prompt fit beside them.

``ROPD_VLLM_CMD`` (or ``--vllm-cmd``) replaces the ``python -m vllm...`` prefix, e.g. to run vLLM from
another environment (``/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server``) or a container.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_PORT = 8000
DEFAULT_GPU_MEMORY_UTILIZATION = 0.85
DEFAULT_WAIT_S = 1200.0  # loading a large model from disk can take many minutes
STOP_GRACE_S = 20.0


def register(subparsers) -> None:
    p = subparsers.add_parser("judge", help="run a local judge server (vLLM)",
                              description="Local judge servers for the rubricator and verifier.")
    sub = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser(
        "serve", help="start vLLM's OpenAI-compatible server and print the config to use it",
        description="Start vLLM's OpenAI-compatible server on this machine's GPU(s), wait until it answers, "
                    "print the base URL and the run-config lines, and keep it running until Ctrl-C. "
                    "Arguments after `--` go to vLLM unchanged.")
    s.add_argument("--model", required=True, help="local model dir or hub id of the judge model")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for other machines; "
                   "default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION,
                   help=f"fraction of GPU memory vLLM may use (default {DEFAULT_GPU_MEMORY_UTILIZATION})")
    s.add_argument("--served-model-name", help="model name clients send (default: the model dir's name)")
    s.add_argument("--tensor-parallel-size", type=int, help="GPUs to shard the model over")
    s.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    s.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_S,
                   help=f"seconds to wait for the server to answer (default {DEFAULT_WAIT_S:g})")
    s.add_argument("--vllm-cmd", default=os.environ.get("ROPD_VLLM_CMD"),
                   help="command prefix replacing `python -m vllm.entrypoints.openai.api_server` "
                        "(default: $ROPD_VLLM_CMD)")
    s.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then extra vLLM arguments")
    s.set_defaults(func=serve)


def served_name(model: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    p = Path(model)
    return p.name if p.exists() and p.name else model


def build_command(args) -> list[str]:
    from engine.errors import JudgeError

    if args.vllm_cmd:
        prefix = shlex.split(args.vllm_cmd)
    else:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise JudgeError(
                f"vLLM is not installed in this environment ({sys.executable})",
                hint="install it on a CUDA GPU machine (pip install -e '.[gpu]': the vLLM verl 0.9.1 pins), or run "
                     "vLLM from another environment with --vllm-cmd '/path/to/python -m " + VLLM_MODULE + "'")
        prefix = [sys.executable, "-m", VLLM_MODULE]
    extra = list(args.vllm_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = prefix + ["--model", args.model, "--host", args.host, "--port", str(args.port),
                    "--served-model-name", served_name(args.model, args.served_model_name),
                    "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.tensor_parallel_size:
        cmd += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    return cmd + extra


def _check_inputs(args) -> None:
    from engine.errors import ConfigError, JudgeError

    looks_local = args.model.startswith((".", "/", "~")) or os.sep in args.model and Path(args.model).exists()
    if looks_local and not Path(args.model).expanduser().exists():
        raise ConfigError(f"judge model not found: {args.model}", hint="pass --model with an existing model "
                          "dir (or a hub id such as Qwen/Qwen3-8B)")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((args.host, args.port))
        except OSError as e:
            raise JudgeError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})",
                             hint="pick a free port with --port, or stop what is using it") from None


def client_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn() or "127.0.0.1"
    return host


def _models_listing(base_url: str, timeout: float = 2.0) -> list[dict] | None:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            data = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return [m for m in data.get("data", []) if isinstance(m, dict)]


def models_answer(base_url: str, timeout: float = 2.0) -> list[str] | None:
    """The model ids served at ``base_url`` (``.../v1``), or None while it does not answer."""
    listing = _models_listing(base_url, timeout)
    return None if listing is None else [str(m.get("id")) for m in listing]


def served_context(base_url: str, model: str) -> int | None:
    """The context length vLLM reports for ``model`` (``max_model_len`` in ``/v1/models``)."""
    from engine.judging.server_limits import facts_from_models

    return facts_from_models(_models_listing(base_url) or [], model)


class _OutputTail:
    """Forwards the server's output to our stderr and keeps its last lines for error messages."""

    def __init__(self, stream, keep: int = 30):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            print(f"[vllm] {line}", file=sys.stderr, flush=True)

    def text(self) -> str:
        self._thread.join(timeout=1.0)
        return "\n".join(self.lines)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def context_plan(context_len: int):
    """Judge settings that fit ``context_len`` (engine.judging.server_limits.plan_for_context), sized for
    the shipped templates, k teacher answers plus 8 rollouts per rubricator prompt and a 12-criterion rubric."""
    from engine.config import ScorerConfig
    from engine.judging.server_limits import plan_for_context
    from engine.templates.render import default_template_path

    s = ScorerConfig()
    rubricator = len(default_template_path("rubricator").read_text(encoding="utf-8"))
    verifier = len(default_template_path("verifier").read_text(encoding="utf-8")) + 150 * s.max_criteria  # + rubric
    question = 500
    return plan_for_context(context_len, prompt_overhead_chars=max(rubricator, verifier) + question,
                            answers_per_prompt=s.k + 8, default_chunk=s.verifier_chunk_size,
                            default_budget=s.answer_char_budget, default_max_criteria=s.max_criteria,
                            min_criteria=s.min_criteria)


def config_lines(base_url: str, model: str, plan=None) -> list[str]:
    """The run-config lines for this server; with a context ``plan``, max_tokens and the scorer settings
    that fit its context (and json_schema output: vLLM's guided decoding then writes only valid shapes)."""
    extra = f", max_tokens: {plan.max_tokens}, response_format: json_schema" if plan else ""
    lines = [
        "judge:",
        "  mode: llm",
        f"  rubricator: {{model: {model}, base_url: {base_url}{extra}}}",
        f"  verifier: {{model: {model}, base_url: {base_url}{extra}}}",
    ]
    if plan:
        lines += ["scorer:", f"  answer_char_budget: {plan.answer_char_budget}",
                  f"  verifier_chunk_size: {plan.verifier_chunk_size}"]
        if plan.max_criteria < 12:
            lines.append(f"  max_criteria: {plan.max_criteria}")
    return lines


def override_args(base_url: str, model: str, plan=None) -> str:
    out = ["judge.mode=llm"]
    for role in ("rubricator", "verifier"):
        out += [f"judge.{role}.base_url={base_url}", f"judge.{role}.model={model}"]
        if plan:
            out += [f"judge.{role}.max_tokens={plan.max_tokens}", f"judge.{role}.response_format=json_schema"]
    if plan:
        out += [f"scorer.answer_char_budget={plan.answer_char_budget}",
                f"scorer.verifier_chunk_size={plan.verifier_chunk_size}"]
        if plan.max_criteria < 12:
            out.append(f"scorer.max_criteria={plan.max_criteria}")
    return " ".join(out)


def serve(args) -> int:
    from engine.errors import JudgeError

    _check_inputs(args)
    cmd = build_command(args)
    model = served_name(args.model, args.served_model_name)
    base_url = f"http://{client_host(args.host)}:{args.port}/v1"
    probe_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}/v1"
    print(f"starting vLLM: {shlex.join(cmd)}", flush=True)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise JudgeError(f"cannot start the judge server: {e.filename} not found",
                         hint="check --vllm-cmd / $ROPD_VLLM_CMD") from None
    tail = _OutputTail(proc.stdout)

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        deadline = time.monotonic() + args.wait_timeout
        while True:
            if proc.poll() is not None:
                raise JudgeError(f"the vLLM server exited with code {proc.returncode} before answering "
                                 f"on {probe_url}; its last output:\n{tail.text() or '(none)'}",
                                 hint="check the model path, GPU memory (--gpu-memory-utilization) and vLLM args")
            ids = models_answer(probe_url)
            if ids is not None:
                break
            if time.monotonic() > deadline:
                _stop(proc)
                raise JudgeError(f"the vLLM server did not answer on {probe_url}/models within "
                                 f"{args.wait_timeout:g} s; stopped it. Its last output:\n{tail.text() or '(none)'}",
                                 hint="large models load slowly: raise --wait-timeout")
            time.sleep(1.0)
        served = ", ".join(ids) if ids else model
        print(f"judge server ready: {base_url} (model: {served})", flush=True)
        context = served_context(probe_url, model) or args.max_model_len
        plan = context_plan(context) if context else None
        if plan:
            print(f"context: {context} tokens per request; max_tokens {plan.max_tokens} leaves room for "
                  f"{plan.answers_per_prompt} answers of {plan.answer_char_budget} characters", flush=True)
            if plan.too_small:
                print(f"warning: a {context}-token context leaves only about {plan.answer_char_budget} characters "
                      "per answer; start the server with --max-model-len 8192 or more", flush=True)
        print("put this in your run config (or use it for the rubricator and verifier separately):", flush=True)
        for line in config_lines(base_url, model, plan):
            print(line, flush=True)
        print(f"as overrides: {override_args(base_url, model, plan)}", flush=True)
        print("vLLM started without --api-key accepts any key. Press Ctrl-C to stop the server.", flush=True)
        rc = proc.wait()
        raise JudgeError(f"the vLLM server exited with code {rc}; its last output:\n{tail.text() or '(none)'}")
    except KeyboardInterrupt:
        print("stopping the judge server ...", flush=True)
        _stop(proc)
        print("judge server stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if proc.poll() is None:
            _stop(proc)

"""Held-out validation for the embedded trainer: greedy answers, accuracy by the task's checker.

One answer per validation prompt, generated greedily (deterministic, so successive evaluations
differ only because the policy changed), batched, at most ``trainer.max_new_tokens`` tokens as in
training, and checked with the task's checker (``task.checker``) against the prompt's ground truth. No
judge calls: validation accuracy costs generation time only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engine.trainers.data import chat_messages


@dataclass
class EvalResult:
    texts: list[str]
    lengths: list[int]  # completion tokens, up to and including the first EOS (as in training)
    correct: list[bool]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """``val/accuracy``, ``val/response_length`` and ``time/eval`` for the run store."""
        n = len(self.correct)
        return {
            "val/accuracy": sum(self.correct) / n if n else 0.0,
            "val/response_length": sum(self.lengths) / n if n else 0.0,
            "time/eval": self.seconds,
        }


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], *, system_prompt: str | None,
                   max_new_tokens: int, batch_size: int, eos_token_ids: Sequence[int] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[int]]:
    """Greedy completions (texts and token lengths) of ``prompts`` (strings or chat messages).
    ``progress(prompts_done, tokens_of_the_running_batch)`` reports progress as it goes."""
    import torch
    from transformers import GenerationConfig

    from engine.trainers.token_progress import counting_forwards

    report = progress or (lambda _done, _tokens: None)

    eos = list(eos_token_ids or [tokenizer.eos_token_id])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=pad, use_cache=True)
    texts: list[str] = []
    lengths: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), max(1, batch_size)):
                chunk = prompts[start:start + max(1, batch_size)]
                rendered = [tokenizer.apply_chat_template(chat_messages(p, system_prompt), tokenize=False,
                                                          add_generation_prompt=True) for p in chunk]
                enc = tokenizer(rendered, return_tensors="pt", padding=True, padding_side="left",
                                add_special_tokens=False).to(model.device)
                with counting_forwards(model, lambda n, done=len(texts): report(done, n)):
                    out = model.generate(**enc, generation_config=gen_cfg)
                completions = out[:, enc["input_ids"].shape[1]:].cpu()
                for row in completions.tolist():
                    n = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
                    lengths.append(n)
                    texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
                report(len(texts), 0)
    finally:
        model.train(was_training)
    return texts, lengths


def evaluate(model: Any, tokenizer: Any, problems: Sequence[dict[str, Any]], *, system_prompt: str | None,
             max_new_tokens: int, batch_size: int, eos_token_ids: Sequence[int] | None = None,
             checker: Any = None, progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Greedy accuracy of the policy on ``problems`` (each with ``prompt`` and ``ground_truth``), checked by
    ``checker`` (a :class:`~engine.tasks.checker_pool.CheckerPool`; default: the rule-based check). An
    answer whose check times out or fails counts as wrong. ``progress``: see :func:`greedy_answers`."""
    if checker is None:
        from engine.tasks.checker_pool import get_pool

        checker = get_pool("rule")
    t0 = time.perf_counter()
    texts, lengths = greedy_answers(model, tokenizer, [p["prompt"] for p in problems], system_prompt=system_prompt,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    eos_token_ids=eos_token_ids, progress=progress)
    verdicts = checker.check_many([(text, p["ground_truth"]) for text, p in zip(texts, problems)])
    correct = [bool(v.correct) for v in verdicts]
    return EvalResult(texts=texts, lengths=lengths, correct=correct, seconds=time.perf_counter() - t0)

"""Judging: the judges the scorer asks for rubrics and verdicts, and how they reach a model.

- ``protocol``: the :class:`Judge` protocol and :class:`JudgeStageError` (imports nothing concrete);
- ``factory``: :func:`make_judge`, which picks the offline or the LLM judge from the config;
- ``offline``: the deterministic rule-based judge (no network);
- ``llm``: rubricator, verifier and scalar judge behind OpenAI-compatible endpoints;
- ``client``: one role at one endpoint (retries, timeouts, structured output);
- ``cache``: identical requests are never paid for twice (replays);
- ``parsing``: reading replies (untrusted model output) and writing the blocks judges read;
- ``cost``: prices per role, what recorded usage costs, the budget rule (light: the store imports it);
- ``cost_estimate``: the preflight's estimate of a first step's judge cost (a dry render of its prompts).
"""

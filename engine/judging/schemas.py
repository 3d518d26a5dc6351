"""JSON schemas of judge replies, made for each request with its exact shape.

With ``judge.<role>.response_format=json_schema`` the schema is sent with the request; servers with
guided decoding (vLLM, llama.cpp) then let the model write only replies of that shape. A static schema
would let a small model write a ``judgement`` list of any length (SmolLM2 wrote ``false`` until
``max_tokens``); these pin every length the reply must have: the number of answers
(``minItems`` = ``maxItems``), each answer's index (an enum of 1..N), the number of judgements per
answer (the rubric's criteria), and the rubricator's criteria count bounds. Parsing
(:mod:`engine.judging.parsing`) still validates every reply: a server without guided decoding may
ignore the schema.
"""

from __future__ import annotations

from typing import Any


def _answer_index(n_answers: int) -> dict[str, Any]:
    return {"type": "integer", "enum": list(range(1, n_answers + 1))}


def rubric_schema(min_criteria: int, max_criteria: int) -> dict[str, Any]:
    """``ropd.rubric.v1`` with between ``min_criteria`` and ``max_criteria`` criteria of 1-5 points."""
    return {
        "title": "ropd_rubric",
        "type": "object",
        "properties": {
            "schema_version": {"type": "string"},
            "rubrics": {"type": "array", "minItems": min_criteria, "maxItems": max_criteria, "items": {
                "type": "object",
                "properties": {"criterion_id": {"type": "string"}, "category": {"type": "string"},
                               "criterion": {"type": "string", "minLength": 1},
                               "points": {"type": "integer", "minimum": 1, "maximum": 5}},
                "required": ["criterion_id", "category", "criterion", "points"],
                "additionalProperties": False}},
            "maximum_score": {"type": "integer"},
        },
        "required": ["rubrics"],
        "additionalProperties": False,
    }


def verifier_schema(n_answers: int, n_criteria: int) -> dict[str, Any]:
    """``ropd.batch_verifier.v2`` for exactly ``n_answers`` answers and ``n_criteria`` judgements each."""
    return {
        "title": "ropd_batch_verifier",
        "type": "object",
        "properties": {
            "schema_version": {"type": "string"},
            "answers": {"type": "array", "minItems": n_answers, "maxItems": n_answers, "items": {
                "type": "object",
                "properties": {"answer_index": _answer_index(n_answers),
                               "judgement": {"type": "array", "items": {"type": "boolean"},
                                             "minItems": n_criteria, "maxItems": n_criteria},
                               "final_score": {"type": "number"}},
                "required": ["answer_index", "judgement"],
                "additionalProperties": False}},
        },
        "required": ["answers"],
        "additionalProperties": False,
    }


def scalar_schema(n_answers: int) -> dict[str, Any]:
    """``ropd.scalar_judge.v1`` for exactly ``n_answers`` answers, each scored 0-10."""
    return {
        "title": "ropd_scalar_judge",
        "type": "object",
        "properties": {
            "schema_version": {"type": "string"},
            "answers": {"type": "array", "minItems": n_answers, "maxItems": n_answers, "items": {
                "type": "object",
                "properties": {"answer_index": _answer_index(n_answers),
                               "score": {"type": "number", "minimum": 0, "maximum": 10}},
                "required": ["answer_index", "score"],
                "additionalProperties": False}},
        },
        "required": ["answers"],
        "additionalProperties": False,
    }

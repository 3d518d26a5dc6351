"""What the judge costs: prices per role, the cost of recorded token usage, the budget rule, display.

Prices are per role of the run config, in USD per million tokens: ``judge.<role>.price_in_per_mtok``,
``price_out_per_mtok`` and ``price_cached_in_per_mtok`` (prompt tokens the server served from its
prompt cache, as OpenAI reports them in ``usage.prompt_tokens_details.cached_tokens``; unset: billed
at the input price). A call's cost::

    ((prompt_tokens - cached) * price_in + cached * price_cached_in + completion_tokens * price_out) / 1e6

Calls answered from the store's replay cache (``cached=1``) and calls without reported usage cost
nothing here (the offline judge reports none). Which role a call bills to: ``rubricator`` and
``verifier`` their own; ``scalar_judge`` the teacher's prices when ``judge.teacher.model`` is set (it
is then the teacher's endpoint, as in :func:`engine.judging.llm.scalar_endpoint`), else the verifier's.

Works on config dicts (the run's stored snapshot) as well as on :class:`~engine.config.Config`, and
imports nothing heavy: the store derives the ``cost/*`` metrics of each step with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from engine.errors import ConfigError

#: Exit code of a training worker (and of ``ropd-tui --headless train``) whose run stopped at its budget.
EXIT_BUDGET = 5

PRICED_ROLES = ("rubricator", "verifier", "teacher")
PRICE_KEYS = ("price_in_per_mtok", "price_out_per_mtok", "price_cached_in_per_mtok")

# Metric keys the store derives per step when a price is set (engine.store.step_writer).
STEP_USD = "cost/step_usd"
TOTAL_USD = "cost/total_usd"  # running total of the attempt, up to and including the step
PER_1K_ROLLOUTS_USD = "cost/per_1k_rollouts_usd"  # TOTAL_USD per 1,000 student rollouts scored so far
COST_KEYS = (STEP_USD, TOTAL_USD, PER_1K_ROLLOUTS_USD)


@dataclass(frozen=True)
class RolePrice:
    """USD per million tokens; None = not known."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None

    @property
    def known(self) -> bool:
        return self.input is not None or self.output is not None

    @property
    def positive(self) -> bool:
        return any((p or 0) > 0 for p in (self.input, self.output, self.cached_input))

    def usd(self, prompt_tokens: int | None, completion_tokens: int | None, cached_prompt_tokens: int | None = 0
            ) -> float:
        prompt = max(0, int(prompt_tokens or 0))
        cached = min(prompt, max(0, int(cached_prompt_tokens or 0)))
        p_in = self.input or 0.0
        p_cached = p_in if self.cached_input is None else self.cached_input
        return ((prompt - cached) * p_in + cached * p_cached + max(0, int(completion_tokens or 0)) * (self.output or 0.0)
                ) / 1e6


@dataclass(frozen=True)
class Pricing:
    """The prices of one run config, per role."""

    roles: Mapping[str, RolePrice]
    reward_mode: str = "rubric"
    teacher_judges: bool = False  # scalar_judge bills to the teacher (judge.teacher.model is set)
    offline: bool = False  # judge.mode=offline

    def for_call(self, role: str) -> RolePrice:
        if role == "scalar_judge":
            role = "teacher" if self.teacher_judges else "verifier"
        return self.roles.get(role, RolePrice())

    @property
    def used_roles(self) -> tuple[str, ...]:
        """The roles whose prices a training step pays (by reward mode)."""
        if self.reward_mode == "scalar_judge":
            return ("teacher",) if self.teacher_judges else ("verifier",)
        return ("rubricator", "verifier")

    @property
    def positive(self) -> bool:
        """Some role a step uses has a price above 0: cost metrics are worth writing."""
        return not self.offline and any(self.roles.get(r, RolePrice()).positive for r in self.used_roles)

    @property
    def state(self) -> str:
        """``offline`` (offline judge), ``priced`` (every used role has a price), ``partial`` (some),
        ``free`` (every used role priced at 0) or ``unpriced`` (no price set)."""
        if self.offline:
            return "offline"
        prices = [self.roles.get(r, RolePrice()) for r in self.used_roles]
        if not any(p.known for p in prices):
            return "unpriced"
        if not any(p.positive for p in prices):
            return "free" if all(p.known for p in prices) else "unpriced"
        return "priced" if all(p.known for p in prices) else "partial"

    @property
    def unpriced_roles(self) -> list[str]:
        return [r for r in self.used_roles if not self.roles.get(r, RolePrice()).known]

    def usd(self, usage: Iterable[tuple[str, int | None, int | None, int | None]]) -> float:
        """Cost of ``(role, prompt_tokens, cached_prompt_tokens, completion_tokens)`` rows."""
        return sum(self.for_call(role).usd(p, c, cached) for role, p, cached, c in usage)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pricing_from_config(config: Any) -> Pricing:
    """The :class:`Pricing` of a :class:`~engine.config.Config` or of its dict (a run's stored config)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    judge = d.get("judge") if isinstance(d.get("judge"), Mapping) else {}
    roles = {}
    for role in PRICED_ROLES:
        ep = judge.get(role) if isinstance(judge.get(role), Mapping) else {}
        roles[role] = RolePrice(_num(ep.get("price_in_per_mtok")), _num(ep.get("price_out_per_mtok")),
                                _num(ep.get("price_cached_in_per_mtok")))
    scorer = d.get("scorer") if isinstance(d.get("scorer"), Mapping) else {}
    teacher = judge.get("teacher") if isinstance(judge.get("teacher"), Mapping) else {}
    return Pricing(roles=roles, reward_mode=str(scorer.get("reward_mode") or "rubric"),
                   teacher_judges=bool(teacher.get("model")), offline=judge.get("mode") == "offline")


def budget_of(config: Any) -> float | None:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    judge = d.get("judge") if isinstance(d.get("judge"), Mapping) else {}
    return _num(judge.get("budget_usd"))


def check_cost_settings(cfg: Any) -> None:
    """Prices >= 0, a budget > 0 and a budget only with a price to count against it (ConfigError)."""
    for role in PRICED_ROLES:
        ep = getattr(cfg.judge, role)
        for key in PRICE_KEYS:
            v = getattr(ep, key)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ConfigError(f"judge.{role}.{key} must be a price >= 0 (USD per million tokens), got {v:g}")
    budget = cfg.judge.budget_usd
    if budget is None:
        return
    if not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"judge.budget_usd must be > 0 (USD), got {budget:g}",
                          hint="leave it unset for no budget")
    pricing = pricing_from_config(cfg)
    if not pricing.positive:
        roles = " and ".join(f"judge.{r}" for r in pricing.used_roles)
        raise ConfigError(f"judge.budget_usd is {budget:g} USD but no judge price is set, so the budget could never "
                          f"be reached", hint=f"set the prices of {roles} (price_in_per_mtok, price_out_per_mtok), "
                                              "or unset judge.budget_usd")


# ---------------------------------------------------------------------------------------------
# the budget rule

def budget_stop_reason(total_usd: float | None, last_step_usd: float | None, budget_usd: float | None,
                       step: int) -> str | None:
    """Why the run must stop after ``step``, or None to go on: the next step, costing about what the
    last one did, would take the total past the budget (or the total already passed it)."""
    if budget_usd is None or total_usd is None:
        return None
    nxt = max(0.0, last_step_usd or 0.0)
    if total_usd >= budget_usd or total_usd + nxt > budget_usd:
        return (f"judge budget reached after step {step}: {format_usd(total_usd)} spent of judge.budget_usd "
                f"{format_usd(budget_usd)}, and the next step would cost about {format_usd(nxt)}")
    return None


def run_budget_reason(store: Any, run_id: int, budget_usd: float | None, step: int) -> str | None:
    """:func:`budget_stop_reason` from the run's latest ``cost/*`` metrics in the store."""
    if budget_usd is None:
        return None
    latest = store.latest_metrics([run_id]).get(run_id, {})
    return budget_stop_reason(latest.get(TOTAL_USD), latest.get(STEP_USD), budget_usd, step)


# ---------------------------------------------------------------------------------------------
# showing costs

def cost_summary(config: Any, latest: Mapping[str, float] | None) -> dict[str, Any]:
    """A run's judge cost from its config and latest metrics (the current attempt): pricing state, total,
    last step, per 1,000 rollouts, budget and the share of it used, and ``text`` (as :func:`describe_cost`)."""
    pricing = pricing_from_config(config)
    latest = latest or {}
    total, budget = latest.get(TOTAL_USD), budget_of(config)
    return {"pricing": pricing.state, "unpriced_roles": pricing.unpriced_roles, "total_usd": total,
            "last_step_usd": latest.get(STEP_USD), "per_1k_rollouts_usd": latest.get(PER_1K_ROLLOUTS_USD),
            "budget_usd": budget, "budget_used": (total / budget) if total is not None and budget else None,
            "text": describe_cost(total, pricing.state)}


def format_usd(value: float | None) -> str:
    """``$12.34``, ``$0.90``, ``$0.0123`` (three significant digits below 10 cents), ``-`` for None."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 0.1:
        return f"${value:.2f}"
    if abs(value) < 1e-6:
        return "<$0.000001"
    return f"${value:.{2 - math.floor(math.log10(abs(value)))}f}"  # three significant digits


def describe_cost(value: float | None, state: str) -> str:
    """A cost as a person should read it: never "$0.00" for a judge nobody priced.

    ``state`` is :attr:`Pricing.state`: offline -> "free (offline judge)", free -> "free",
    unpriced -> "-" (not known), partial -> the value marked as a lower bound."""
    if state == "offline":
        return "free (offline judge)"
    if state == "free":
        return "free"
    if state == "unpriced" or value is None:
        return "-"
    return format_usd(value) + ("+" if state == "partial" else "")


def describe_run_cost(cost: dict) -> str:
    """One line: total, last step, per 1,000 rollouts and the budget; "free" / "-" when nothing is priced."""
    state = cost["pricing"]
    if cost["total_usd"] is None:
        if state == "priced" or state == "partial":
            return "- (no priced judge usage recorded yet)"
        if state == "unpriced":
            return "- (not priced: set judge.<role>.price_in_per_mtok and price_out_per_mtok)"
        return cost["text"]
    parts = [f"{cost['text']} total"]
    if cost["last_step_usd"] is not None:
        parts.append(f"{format_usd(cost['last_step_usd'])} last step")
    if cost["per_1k_rollouts_usd"] is not None:
        parts.append(f"{format_usd(cost['per_1k_rollouts_usd'])} per 1,000 rollouts")
    if cost["budget_usd"]:
        parts.append(f"budget {format_usd(cost['budget_usd'])} ({cost['budget_used']:.0%} used)")
    if cost["unpriced_roles"]:
        parts.append(f"not counted: {', '.join(cost['unpriced_roles'])} (no price)")
    return " · ".join(parts)

"""The figures an operator watches during a rollout, for each arm side by side.

An arm is the set of conversations that drew it (bot/rollouts.py), so both arms started in
the same period on the same channel and differ only in the template version: comparing them
is fair where comparing this week's live version with last week's is not. Each figure counts
from the rollout's start to its end (promoted or rolled back: from then on everyone has the
same version), and is counted the way the statistics page counts it (bot/operator_stats.py):
one outcome per user message, thumbs from the widget's verdicts, reply time as the median.

Pure functions over the Store, run on the database thread.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .operator_stats import _outcome, outcome_shares, percentile, satisfaction
from .rollouts import CANDIDATE, LIVE, Rollout
from .store import ANSWERED, HANDED_OVER, Store


def _in_arms(store: Store, rollout: Rollout, columns: str, table: str, alias: str, condition: str = "") -> list[dict]:
    """`columns` of the rows of `table` (as `alias`) that belong to the rollout's conversations
    and were written during the rollout, each with the arm its conversation drew."""
    return store.select(
        f"select a.arm, {columns} from rollout_arms a join {table} {alias} on {alias}.conversation_id = "
        f"a.conversation_id where a.rollout_id = ? and {alias}.created_at >= ? "
        f"and (? is null or {alias}.created_at <= ?) {condition} order by {alias}.id",
        [rollout.id, rollout.started_at, rollout.ended_at, rollout.ended_at])


def arm_figures(store: Store, rollout: Rollout) -> dict[str, dict]:
    """{"candidate": figures, "live": figures}: conversations, user messages, what became of
    them (answered and hand-over rates, hand-overs by reason), mean confidence, thumbs up and
    down, and the median reply time in seconds."""
    conversations = Counter({row["arm"]: row["n"] for row in store.select(
        "select arm, count(*) as n from rollout_arms where rollout_id = ? group by arm", [rollout.id])})
    turns = _in_arms(store, rollout, "m.id, m.status", "messages", "m", "and m.role = 'user'")
    # the newest escalation of a turn gives its reason
    reasons = {row["message_id"]: row["reason"]
               for row in _in_arms(store, rollout, "e.message_id, e.reason", "escalations", "e")}
    replies = _in_arms(store, rollout, "m.confidence, m.latency_ms", "messages", "m",
                       "and ((m.role = 'bot' and m.kind = 'answer') or (m.role = 'system' and m.kind = 'handover'))")
    verdicts = _in_arms(store, rollout, "f.helpful", "feedback", "f")
    outcomes: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for turn in turns:
        outcomes[turn["arm"]].append(_outcome(turn, reasons))  # as the statistics page counts it
    figures = {}
    for arm in (CANDIDATE, LIVE):
        shares = outcome_shares(outcomes[arm])
        confidences = [r["confidence"] for r in replies if r["arm"] == arm and r["confidence"] is not None]
        seconds = [r["latency_ms"] / 1000 for r in replies if r["arm"] == arm and r["latency_ms"] is not None]
        figures[arm] = {
            "conversations": conversations[arm],
            "messages": shares["total"],
            "answered_rate": _rate(shares, lambda s: s["outcome"] == ANSWERED),
            "handover_rate": _rate(shares, lambda s: s["outcome"] == HANDED_OVER),
            "handovers_by_reason": {s["reason"]: s["count"] for s in shares["shares"] if s["outcome"] == HANDED_OVER},
            "outcomes": shares,
            "mean_confidence": sum(confidences) / len(confidences) if confidences else None,
            "feedback": satisfaction([v["helpful"] == 1 for v in verdicts if v["arm"] == arm]),
            "reply_time_s": {"median": percentile(seconds, 0.5), "count": len(seconds)},
        }
    return figures


def _rate(shares: dict, which) -> float | None:
    return sum(s["share"] for s in shares["shares"] if which(s)) if shares["total"] else None

"""The operator statistics: what the bot did with each user message and each conversation
episode, overall and per template version.

Every share here has one denominator, so the shares of one figure add up to 1: a user
message (a turn) ends in exactly one outcome, and an episode is resolved, not resolved or
not decided yet. Durations are in seconds; the page chooses how to write them. Operators
compare template versions, so every figure is also split by the version that answered (the
template name and version stored on the episode's first bot reply).

Pure functions over the Store, run on the database thread (`ConversationManager.db`).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import queries
from .messages import utcnow
from .store import ANSWERED, FOR_AGENT, HANDED_OVER, PENDING, Store, iso

# An answered episode counts as resolved once this long has passed without a new user message.
RESOLUTION_WINDOW = timedelta(hours=24)
# A turn's outcome, from its user message's status; hand-overs are further split by reason.
OUTCOMES = (ANSWERED, HANDED_OVER, FOR_AGENT, PENDING)
UNKNOWN_REASON = "unknown"  # a handed-over turn whose escalation row is missing


@dataclass
class Episode:
    """One ownership episode of a conversation, from its first user message in the period."""

    turns: list[dict] = field(default_factory=list)  # its user messages, oldest first
    replies: list[dict] = field(default_factory=list)  # bot answers and hand-over notices, oldest first
    handovers: list[dict] = field(default_factory=list)  # its escalations
    feedback: dict | None = None

    @property
    def version(self) -> tuple[str | None, int | None]:
        for reply in self.replies:
            if reply["template_version"] is not None:
                return reply["template_name"], reply["template_version"]
        return None, None


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _rows(store: Store, since: str) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """User messages, bot replies, escalations and verdicts since `since`, oldest first."""
    turns = store.select(
        "select id, conversation_id, episode, status, created_at from messages "
        "where role = 'user' and created_at >= ? order by id", [since])
    replies = store.select(
        "select id, conversation_id, episode, kind, reply_to, template_name, template_version, created_at "
        "from messages where created_at >= ? and ((role = 'bot' and kind = 'answer') "
        "or (role = 'system' and kind = 'handover')) order by id", [since])
    handovers = store.select(
        "select e.conversation_id, e.message_id, e.reason, e.created_at, m.episode from escalations e "
        "left join messages m on m.id = e.message_id where e.created_at >= ? order by e.id", [since])
    verdicts = store.select(
        "select conversation_id, episode, helpful from feedback where created_at >= ? order by id", [since])
    return turns, replies, handovers, verdicts


def _episodes(turns: list[dict], replies: list[dict], handovers: list[dict],
              verdicts: list[dict]) -> dict[tuple[int, int], Episode]:
    episodes: dict[tuple[int, int], Episode] = defaultdict(Episode)
    for turn in turns:
        episodes[turn["conversation_id"], turn["episode"]].turns.append(turn)
    for reply in replies:
        episodes[reply["conversation_id"], reply["episode"]].replies.append(reply)
    for handover in handovers:
        episodes[handover["conversation_id"], handover["episode"]].handovers.append(handover)
    for verdict in verdicts:
        episodes[verdict["conversation_id"], verdict["episode"]].feedback = verdict
    # An episode counts where the user wrote in the period; escalations and verdicts alone do not make one.
    return {key: episode for key, episode in episodes.items() if episode.turns}


def _outcome(turn: dict, reasons: dict[int, str]) -> tuple[str, str | None]:
    status = turn["status"] if turn["status"] in OUTCOMES else PENDING
    return status, (reasons.get(turn["id"], UNKNOWN_REASON) if status == HANDED_OVER else None)


def outcome_shares(outcomes: list[tuple[str, str | None]]) -> dict:
    """The turns by outcome (hand-overs by reason), each with its share of all turns."""
    counts = Counter(outcomes)
    total = len(outcomes)
    order = sorted(counts, key=lambda key: (OUTCOMES.index(key[0]), -counts[key], key[1] or ""))
    return {"total": total, "shares": [
        {"outcome": outcome, "reason": reason, "count": counts[outcome, reason], "share": counts[outcome, reason] / total}
        for outcome, reason in order]}


def _resolved(episode: Episode, later_turns: list[str], now: datetime) -> bool | None:
    """True, False, or None while an answered episode is still inside the resolution window."""
    if episode.feedback and episode.feedback["helpful"] == 1:
        return True
    answers = [reply["created_at"] for reply in episode.replies if reply["kind"] == "answer"]
    handed = episode.handovers or any(turn["status"] in (HANDED_OVER, FOR_AGENT) for turn in episode.turns)
    if handed or not answers:
        return False
    last = _at(answers[-1])
    if any(last < _at(at) <= last + RESOLUTION_WINDOW for at in later_turns):
        return False
    return True if now - last >= RESOLUTION_WINDOW else None


def resolution(verdicts: list[bool | None]) -> dict:
    resolved, unresolved = verdicts.count(True), verdicts.count(False)
    decided = resolved + unresolved
    return {"rate": resolved / decided if decided else None, "resolved": resolved, "unresolved": unresolved,
            "undecided": verdicts.count(None)}


def satisfaction(helpful: list[bool]) -> dict:
    up = sum(helpful)
    return {"share": up / len(helpful) if helpful else None, "helpful": up, "not_helpful": len(helpful) - up,
            "total": len(helpful)}


def percentile(values: list[float], fraction: float) -> float | None:
    """The inclusive percentile of `values` (None for none, the value itself for one)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def first_answer_seconds(episode: Episode) -> float | None:
    """From the episode's first user message to the bot's first answer or hand-over after it."""
    asked = _at(episode.turns[0]["created_at"])
    for reply in episode.replies:
        if _at(reply["created_at"]) >= asked:
            return (_at(reply["created_at"]) - asked).total_seconds()
    return None


def durations(seconds: list[float]) -> dict:
    return {"median": percentile(seconds, 0.5), "p90": percentile(seconds, 0.9), "count": len(seconds)}


def _by_reason(handovers: list[dict]) -> dict[str, int]:
    counts = Counter(handover["reason"] for handover in handovers)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _daily(turns: list[dict], days: int, now: datetime) -> list[dict]:
    per_day: dict[str, Counter] = defaultdict(Counter)
    for turn in turns:
        status = turn["status"] if turn["status"] in OUTCOMES else PENDING
        per_day[turn["created_at"][:10]][status] += 1
    series = []
    for offset in range(days - 1, -1, -1):
        day = (now.date() - timedelta(days=offset)).isoformat()
        counts = per_day.get(day, Counter())
        series.append({"date": day, "messages": sum(counts.values()), **{outcome: counts[outcome] for outcome in OUTCOMES}})
    return series


def _figures(episodes: list[Episode], outcomes: list[tuple[str, str | None]], later: dict[int, list[str]],
             now: datetime) -> dict:
    """The figures every split shows: outcomes, resolution, satisfaction, time to first answer."""
    first = [s for s in (first_answer_seconds(e) for e in episodes) if s is not None]
    return {
        "outcomes": outcome_shares(outcomes),
        "episodes": len(episodes),
        "resolution": resolution([_resolved(e, later[e.turns[0]["conversation_id"]], now) for e in episodes]),
        "satisfaction": satisfaction([e.feedback["helpful"] == 1 for e in episodes if e.feedback]),
        "first_answer_s": durations(sorted(first)),
        "handovers_by_reason": _by_reason([h for e in episodes for h in e.handovers]),
    }


def _newest_first(item: tuple[tuple[str | None, int | None], list]) -> tuple:
    (name, version), _ = item
    return name is None, name or "", -(version or 0)


def stats(store: Store, days: int) -> dict:
    """The statistics page's figures for the last `days` days (UTC)."""
    now = utcnow()
    since = iso(now - timedelta(days=days))
    turns, replies, handovers, verdicts = _rows(store, since)
    reasons = {h["message_id"]: h["reason"] for h in handovers}  # the newest escalation of a turn wins
    outcome_of = {turn["id"]: _outcome(turn, reasons) for turn in turns}
    later: dict[int, list[str]] = defaultdict(list)
    for turn in turns:
        later[turn["conversation_id"]].append(turn["created_at"])

    def figures(group: list[Episode]) -> dict:
        outcomes = [outcome_of[turn["id"]] for episode in group for turn in episode.turns]
        return _figures(group, outcomes, later, now)

    episodes = list(_episodes(turns, replies, handovers, verdicts).values())
    versions: dict[tuple[str | None, int | None], list[Episode]] = defaultdict(list)
    for episode in episodes:
        versions[episode.version].append(episode)
    series = _daily(turns, days, now)
    latencies = [ms / 1000 for ms in queries.turn_latencies(store, since)]
    confidences = queries.turn_confidences(store, since)
    verdict_counts = queries.feedback_counts(store, since)
    comments = queries.feedback_comments(store, since)
    return {
        "days": series,
        "resolution_window_hours": RESOLUTION_WINDOW.total_seconds() / 3600,
        **figures(episodes),
        "answered_share": sum(d[ANSWERED] for d in series) / len(turns) if turns else None,
        "reply_time_s": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                         "count": len(latencies)},
        "confidence_histogram": [
            {"from": i / 10, "to": (i + 1) / 10,
             "count": sum(1 for c in confidences if i / 10 <= c < (i + 1) / 10 or (i == 9 and c == 1.0))}
            for i in range(10)],
        "versions": [
            {"template": name, "version": version, **figures(group)}
            for (name, version), group in sorted(versions.items(), key=_newest_first)],
        "feedback": {
            "helpful": verdict_counts["helpful"], "not_helpful": verdict_counts["not_helpful"],
            "comments": [{"conversation_id": c["conversation_id"], "episode": c["episode"],
                          "helpful": bool(c["helpful"]), "comment": c["comment"], "created_at": c["created_at"]}
                         for c in comments],
        },
    }

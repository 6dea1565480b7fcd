"""Running a regression set: every case against the draft and against the live version.

A run is kept in the database as it goes (one row per case and version), so the page that
started it can close, another operator can watch it, and nothing is lost when it is
cancelled. Each screenshot is read once per run and serves both versions. Cases run a few at
a time, each generation holding a place in the engine's queue that the caller lends (in the
server, out of the share customers never lose); cancelling stops the generations at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from ..store import Store, iso
from ..templates import Template, TemplateError
from .cases import Case, CaseError, regression_set
from .checks import article_slug, judge, Verdict
from .report import ARMS, DEFAULT_TARGET_PRECISION, case_change, comparison, counts_by_change, summary
from .turn import Places, PreparedScreenshots, TemplateTurn, TurnResult, free_places

log = logging.getLogger(__name__)

AT_ONCE = 2  # cases of one run in the engine at the same time
RUNNING, DONE, CANCELLED, FAILED, INTERRUPTED = "running", "done", "cancelled", "failed", "interrupted"
OnResult = Callable[[Case, str, TurnResult, Verdict], Awaitable[None] | None]


class SetCannotRun(Exception):
    """The set cannot run at all (no cases, a broken case file, no live version): why, in words."""


@dataclass(frozen=True)
class Arm:
    name: str  # draft | live | version N
    template: Template
    version: int | None  # None for an unsaved draft


async def evaluate(turn: TemplateTurn, cases: Sequence[Case], arms: Sequence[Arm], *, places: Places = free_places,
                   on_result: OnResult | None = None, at_once: int = AT_ONCE) -> list[tuple[Case, str, TurnResult, Verdict]]:
    """Every case under every arm; `on_result` hears each as it is decided."""
    limiter = asyncio.Semaphore(at_once)
    readings: dict[tuple[Path, ...], asyncio.Task[PreparedScreenshots]] = {}
    out: list[tuple[Case, str, TurnResult, Verdict]] = []

    def screenshots(case: Case) -> asyncio.Task[PreparedScreenshots]:
        if case.screenshots not in readings:  # read once per run, by whichever case needs them first
            readings[case.screenshots] = asyncio.ensure_future(turn.prepare_files(list(case.screenshots)))
        return readings[case.screenshots]

    async def one(case: Case, arm: Arm) -> None:
        async with limiter:
            prepared = await screenshots(case)
            try:
                result = await turn.run(arm.template, case.text, case.language, prepared, channel=case.channel,
                                        places=places, today=case.date)
            except TemplateError as exc:  # the version cannot be rendered: every case of it fails
                result = TurnResult(outcome="handover", reason="engine_error", error=f"the template does not render: {exc}")
            result = await _with_slugs(turn, result)
            verdict = judge(case, result)
            out.append((case, arm.name, result, verdict))
            if on_result is not None:
                done = on_result(case, arm.name, result, verdict)
                if asyncio.iscoroutine(done):
                    await done

    jobs = [asyncio.ensure_future(one(case, arm)) for case in cases for arm in arms]
    try:
        await asyncio.gather(*jobs)
    except BaseException:
        for job in [*jobs, *readings.values()]:
            job.cancel()
        await asyncio.gather(*jobs, *readings.values(), return_exceptions=True)
        raise
    return out


async def _with_slugs(turn: TemplateTurn, result: TurnResult) -> TurnResult:
    """Name each cited article by its slug too ("auto-renewal"), as cases name them."""
    kb = turn.manager.knowledge
    if not result.cited or kb is None:
        return result
    ids = sorted({c["article_id"] for c in result.cited})
    articles = await turn.manager.db(lambda: {i: kb.article(i) for i in ids})
    cited = tuple({**c, "slug": article_slug((articles.get(c["article_id"]) or {}).get("source", ""), c.get("url", ""))}
                  for c in result.cited)
    return TurnResult(**{**result.__dict__, "cited": cited})


# Runs kept in the database (database thread) --------------------------------------------------
def _insert_run(store: Store, template: str, draft_yaml: str, label: str, live_version: int | None, total: int,
                author: str) -> int:
    with store.transaction():
        run_id = store.db["eval_runs"].insert({
            "template": template, "draft_yaml": draft_yaml, "draft_label": label, "live_version": live_version,
            "status": RUNNING, "total": total, "done": 0, "started_by": author, "started_at": iso(),
        }).last_pk
        store.audit(author, "regression_run", f"template:{template}", run=run_id, cases=total)
    return run_id


def _record(store: Store, run_id: int, case: Case, arm: str, result: TurnResult, verdict: Verdict) -> None:
    with store.transaction():
        store.db["eval_results"].insert({
            "run_id": run_id, "case_key": case.key, "arm": arm,
            "result": json.dumps({**result.as_dict(), "passed": verdict.passed, "failures": list(verdict.failures),
                                  "checks": verdict.checks, "checks_passed": verdict.checks_passed},
                                 ensure_ascii=False),
        })  # once: the unique index refuses a second result for a case and version
        store.db.execute("update eval_runs set done = done + 1 where id = ? and status = ?", [run_id, RUNNING])


def _finish(store: Store, run_id: int, status: str, summary_data: dict | None = None, error: str | None = None) -> bool:
    """Compare-and-set: only a running run ends, once."""
    with store.transaction():
        changed = store.db.execute(
            "update eval_runs set status = ?, finished_at = ?, summary = ?, error = ? where id = ? and status = ?",
            [status, iso(), json.dumps(summary_data) if summary_data else None, error, run_id, RUNNING],
        ).rowcount
    return bool(changed)


def run_row(store: Store, run_id: int) -> dict | None:
    rows = list(store.db["eval_runs"].rows_where("id = ?", [run_id]))
    return rows[0] if rows else None


def runs_of(store: Store, template: str, limit: int = 20) -> list[dict]:
    return list(store.db.query(
        "select id, template, draft_label, live_version, status, total, done, started_by, started_at, finished_at, "
        "summary from eval_runs where template = ? order by id desc limit ?", [template, limit]))


class RegressionRuns:
    """The runs this process is doing: started in the background, watched, cancelled."""

    def __init__(self, turn: TemplateTurn, places: Places = free_places,
                 spawn: Callable[[Any], asyncio.Task] | None = None, cases_directory: Path | None = None) -> None:
        self.turn = turn
        self.manager = turn.manager
        self.store = turn.manager.store
        self.places = places
        self.spawn = spawn or asyncio.ensure_future
        self.cases_directory = cases_directory
        self._tasks: dict[int, asyncio.Task] = {}

    def cases(self, template: str) -> list[Case]:
        if self.cases_directory is None:
            return regression_set(self.store, template)
        return regression_set(self.store, template, self.cases_directory)

    def live(self, template: str) -> Arm:
        """The live version (SetCannotRun when the template has none that can be read)."""
        for found, version in self.manager.templates.candidates(template):
            return Arm("live", found, version or None)
        raise SetCannotRun(f"the template {template} has no published version")

    async def start(self, template: str, draft: Template, draft_yaml: str, author: str, label: str = "draft",
                    target_precision: float = DEFAULT_TARGET_PRECISION) -> int:
        def prepare() -> tuple[list[Case], Arm, int]:
            try:
                cases = self.cases(template)
            except CaseError as exc:
                raise SetCannotRun(str(exc)) from None
            if not cases:
                raise SetCannotRun(f"the template {template} has no regression cases yet")
            live = self.live(template)
            self._interrupt_orphans()
            run_id = _insert_run(self.store, template, draft_yaml, label, live.version, len(cases) * 2, author)
            return cases, live, run_id

        cases, live, run_id = await self.manager.db(prepare)
        arms = [Arm("draft", draft, None), live]
        task = self.spawn(self._execute(run_id, cases, arms, target_precision))
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run_id, None))
        return run_id

    async def _execute(self, run_id: int, cases: list[Case], arms: list[Arm], target: float) -> None:
        async def record(case: Case, arm: str, result: TurnResult, verdict: Verdict) -> None:
            await self.manager.db(_record, self.store, run_id, case, arm, result, verdict)

        try:
            results = await evaluate(self.turn, cases, arms, places=self.places, on_result=record)
        except asyncio.CancelledError:
            await asyncio.shield(self.manager.db(_finish, self.store, run_id, CANCELLED))
            raise
        except Exception as exc:
            log.exception("regression run %d failed", run_id)
            await self.manager.db(_finish, self.store, run_id, FAILED, None, f"{type(exc).__name__}: {exc}")
            return
        figures = {arm.name: summary([(c, r, v) for c, a, r, v in results if a == arm.name], target,
                                     arm.template.escalation.confidence_threshold) for arm in arms}
        await self.manager.db(_finish, self.store, run_id, DONE, figures)

    def _interrupt_orphans(self) -> None:
        """Runs a stopped server left 'running' are marked interrupted (database thread)."""
        for row in self.store.db.query("select id from eval_runs where status = ?", [RUNNING]):
            if row["id"] not in self._tasks:
                _finish(self.store, row["id"], INTERRUPTED, None, "the server stopped during the run")

    async def cancel(self, run_id: int, author: str) -> bool:
        """True when the run was going and is now cancelled (what was decided is kept)."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        row = await self.manager.db(run_row, self.store, run_id)
        if row is None or row["status"] != CANCELLED:  # it ended on its own just before
            return False
        await self.manager.db(self.store.audit, author, "regression_cancel", f"template:{row['template']}", run=run_id)
        return True

    async def view(self, run_id: int) -> dict | None:
        def read() -> dict | None:
            self._interrupt_orphans()
            row = run_row(self.store, run_id)
            if row is None:
                return None
            stored = {(r["case_key"], r["arm"]): json.loads(r["result"])
                      for r in self.store.db["eval_results"].rows_where("run_id = ?", [run_id])}
            return _document(row, stored, self._known_cases(row["template"]))
        return await self.manager.db(read)

    def _known_cases(self, template: str) -> dict[str, Case]:
        try:
            return {case.key: case for case in self.cases(template)}
        except CaseError:
            return {}


def _document(row: dict, stored: dict[tuple[str, str], dict], known: dict[str, Case]) -> dict:
    keys = list(dict.fromkeys([*(k for k in known if any((k, a) in stored for a in ARMS)),
                               *(k for k, _ in stored)]))
    cases, changes = [], []
    for key in keys:
        draft, live = stored.get((key, "draft")), stored.get((key, "live"))
        change = case_change(draft, live)
        changes.append(change)
        case = known.get(key)
        cases.append({"key": key, "case": case.as_dict() if case else {"key": key, "label": key, "removed": True},
                      "draft": draft, "live": live, "change": change})
    figures = json.loads(row["summary"]) if row["summary"] else {}
    return {
        "run": {k: row[k] for k in ("id", "template", "draft_label", "live_version", "status", "total", "done",
                                    "started_by", "started_at", "finished_at", "error")},
        "cases": cases, "changes": counts_by_change(changes), "summary": figures,
        "comparison": comparison(figures.get("draft"), figures.get("live")),
    }


def publish_check(store: Store, template: str, draft_yaml: str, live_version: int | None) -> dict[str, Any]:
    """What the newest finished run of exactly this draft against today's live version says
    (database thread): `run_id` None when there is none."""
    row = store.db.execute(
        "select id, summary from eval_runs where template = ? and status = ? and draft_yaml = ? "
        "and live_version is ? order by id desc limit 1", [template, DONE, draft_yaml, live_version]).fetchone()
    if row is None:
        return {"run_id": None, "comparison": {"worse": False, "why": []}, "summary": {}}
    figures = json.loads(row[1] or "{}")
    return {"run_id": row[0], "comparison": comparison(figures.get("draft"), figures.get("live")), "summary": figures}

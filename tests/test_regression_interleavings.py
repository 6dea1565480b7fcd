"""A regression run under any interleaving of answers, engine failures, cancels and pauses.

Whatever the order, a run ends exactly once (done, or cancelled when a cancel came first),
never changes after that, records each case and version at most once, counts exactly what it
recorded, leaves no generation running, and never passes a case the engine failed.
"""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from bot.regression.runner import RegressionRuns
from bot.regression.turn import TemplateTurn
from bot.templates import TemplateLibrary
from engine.base import EngineError
from tests.held_engine import HeldEngine
from tests.test_conversation import make
from tests.test_regression_core import case_dir

CASES = """\
template: billing
cases:
  - id: one
    text: Why was I charged 88?
    expect: answer
  - id: two
    text: Where are my invoices?
    expect: answer
  - id: three
    text: What is Acme Plus?
    expect: answer
  - id: person
    text: let me talk to a human please
    expect: handover
"""

# Answers come more often than cancels, so that runs are cancelled at every stage, not only at once.
steps = st.lists(st.sampled_from(["release"] * 4 + ["fail", "pause", "pause", "view", "cancel"]), min_size=1,
                 max_size=16)


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_any_interleaving_ends_a_run_once_and_records_each_answer_once(tmp_path_factory, plan):
    asyncio.run(_run(tmp_path_factory.mktemp("run"), plan))


async def _run(directory, plan) -> None:
    engine = HeldEngine()
    manager, _, _ = make(directory / "data", engine)
    runs = RegressionRuns(TemplateTurn(manager, max_new_tokens=16, timeout_s=60),
                          cases_directory=case_dir(directory, CASES))
    draft = TemplateLibrary().get("billing")
    run_id = await runs.start("billing", draft, draft.to_yaml(), "olga")
    seen: list[str] = []
    cancelled_first = False
    failed_texts: set[str] = set()
    for step in plan:
        await asyncio.sleep(0)
        waiting = [r for r in engine.pending() if not r.done and not r.cancelled]
        if step == "release" and waiting:
            waiting[0].release("You paid 88 for Acme Plus.", confidence=0.8)
        elif step == "fail" and waiting:
            failed_texts.add(waiting[0].text)
            waiting[0].fail(EngineError("CUDA error: device-side assert"))
        elif step == "cancel":
            status = (await runs.view(run_id))["run"]["status"]
            ended = await runs.cancel(run_id, "olga")
            assert ended == (status == "running") or status == "running"  # only a going run can be cancelled
            cancelled_first = cancelled_first or ended
        elif step == "pause":
            await asyncio.sleep(0.01)
        seen.append((await runs.view(run_id))["run"]["status"])
    engine.auto("You paid 88 for Acme Plus.", confidence=0.8)  # whatever is left is answered
    for request in [r for r in engine.pending() if not r.done and not r.cancelled]:
        request.release("You paid 88 for Acme Plus.", confidence=0.8)
    for _ in range(500):
        view = await runs.view(run_id)
        if view["run"]["status"] != "running":
            break
        await asyncio.sleep(0.01)
    seen.append(view["run"]["status"])

    final = seen[-1]
    assert final == ("cancelled" if cancelled_first else "done"), (plan, seen)
    first_end = next(i for i, s in enumerate(seen) if s != "running")
    assert set(seen[first_end:]) == {final}, seen  # once ended, never changed
    assert await runs.cancel(run_id, "olga") is False
    store = manager.store
    rows = list(store.db["eval_results"].rows_where("run_id = ?", [run_id]))
    assert len({(r["case_key"], r["arm"]) for r in rows}) == len(rows)
    assert view["run"]["done"] == len(rows) <= view["run"]["total"] == 8
    if final == "done":
        assert len(rows) == 8
    for row in rows:
        result = json.loads(row["result"])
        if result["error"]:
            assert not result["passed"] and result["outcome"] == "handover"
    assert not [r for r in engine.pending() if not r.done and not r.cancelled]  # nothing left generating
    actions = [r["action"] for r in store.db["audit_log"].rows]
    assert actions.count("regression_cancel") == (1 if cancelled_first else 0)
    manager.close()

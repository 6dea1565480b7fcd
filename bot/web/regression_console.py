"""The operator console's regression sets: cases per template, runs of a draft against the live
version, and turning a real conversation turn into a case.

A run belongs to the server, not to the page: it goes on when the page closes and any operator
can watch or cancel it. Its generations take places in the engine's queue from the same share
as "try it" and /v1 (api_share.ApiShare), waiting for one rather than failing, so a long run
never pushes customers into "busy" hand-overs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ..accounts import Session
from ..regression.cases import MAX_SCREENSHOTS, CaseError, operator_case, remove_case
from ..regression.runner import RegressionRuns, SetCannotRun, publish_check, runs_of
from ..regression.saved_turns import TurnNotUsable, case_from_turn
from ..regression.turn import TemplateTurn
from ..runtime import Runtime
from ..template_yaml import set_confidence_threshold
from .api_share import ApiShare
from .auth import require
from .deps import RuntimeDep
from .operator_console import YamlIn, parse_draft
from .params import Name, RowId

OperatorSession = Annotated[Session, Depends(require("operator"))]
ScreenshotNumber = Annotated[int, Path(ge=1, le=MAX_SCREENSHOTS, description="which screenshot of the case, from 1")]
router = APIRouter(tags=["regression sets"])


def regression_runs(runtime: Runtime, share: ApiShare) -> RegressionRuns:
    return RegressionRuns(TemplateTurn.for_settings(runtime.manager, runtime.settings), share.places(),
                          spawn=runtime.spawn)


def _runs(request: Request) -> RegressionRuns:
    return request.app.state.server.regression


RunsDep = Annotated[RegressionRuns, Depends(_runs)]


class RunIn(YamlIn):
    target_precision: float | None = Field(None, gt=0, le=1)  # default: SNAPDESK_EVAL_TARGET_PRECISION


class ThresholdIn(YamlIn):
    threshold: float = Field(ge=0, le=1)


class CaseFromTurnIn(BaseModel):
    template: str | None = Field(None, min_length=1, max_length=64)  # default: the template that answered
    expect: str = Field(pattern="^(answer|handover)$")
    reason: str | None = None
    must_contain: list[str] = Field(default_factory=list, max_length=20)
    must_not_contain: list[str] = Field(default_factory=list, max_length=20)
    cite: list[str] = Field(default_factory=list, max_length=20)
    notes: str = Field("", max_length=2000)
    allow_unchecked_screenshots: bool = False  # screenshots never checked for personal data (OCR off or failed)


def _cannot_run(message: str) -> HTTPException:
    return HTTPException(422, detail={"error": "set_cannot_run", "message": message})


@router.get("/operator/api/templates/{name}/cases", summary="A template's regression set: shipped and own cases")
async def list_cases(name: Name, runtime: RuntimeDep, runs: RunsDep, session: OperatorSession) -> dict:
    def read() -> dict:
        try:
            return {"cases": [c.as_dict() for c in runs.cases(name)]}  # the set a run would answer
        except CaseError as exc:
            raise _cannot_run(str(exc)) from None

    return await runtime.manager.db(read)


@router.delete("/operator/api/cases/{case_id}", summary="Remove one of the operators' own cases")
async def delete_case(case_id: RowId, runtime: RuntimeDep, session: OperatorSession) -> dict:
    if await runtime.manager.db(remove_case, runtime.store, case_id, session.user.name) is None:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such case."})
    return {"ok": True}


@router.get("/operator/api/cases/{case_id}/screenshots/{number}", summary="A case's screenshot (redacted)",
            response_class=FileResponse)
async def case_screenshot(case_id: RowId, number: ScreenshotNumber, runtime: RuntimeDep, session: OperatorSession):
    case = await runtime.manager.db(operator_case, runtime.store, case_id)
    if case is None or number > len(case.screenshots) or not case.screenshots[number - 1].is_file():
        raise HTTPException(404, detail={"error": "not_found", "message": "No such screenshot."})
    return FileResponse(case.screenshots[number - 1], media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


@router.post("/operator/api/messages/{message_id}/case",
             summary="Turn a real user message (its screenshots included, redacted) into a regression case")
async def add_case_from_turn(message_id: RowId, body: CaseFromTurnIn, runtime: RuntimeDep,
                             session: OperatorSession) -> dict:
    try:
        spec_extra = dict(expect=body.expect, reason=body.reason, must_contain=body.must_contain,
                          must_not_contain=body.must_not_contain, cite=body.cite, notes=body.notes)
        case_id, template = await runtime.manager.db(case_from_turn, runtime.store, runtime.manager.templates,
                                                     message_id, body.template, spec_extra, session.user.name,
                                                     body.allow_unchecked_screenshots)
    except TurnNotUsable as exc:
        raise HTTPException(exc.status, detail={"error": exc.code, "message": str(exc)}) from None
    return {"case_id": case_id, "template": template}


@router.post("/operator/api/templates/{name}/runs",
             summary="Run the template's regression set against a draft and the live version")
async def start_run(name: Name, body: RunIn, runtime: RuntimeDep, runs: RunsDep, session: OperatorSession) -> dict:
    draft = await parse_draft(body.yaml)
    try:
        run_id = await runs.start(name, draft, body.yaml, session.user.name,
                                  target_precision=body.target_precision or runtime.settings.eval_target_precision)
    except SetCannotRun as exc:
        raise _cannot_run(str(exc)) from None
    return {"run_id": run_id}


@router.get("/operator/api/templates/{name}/runs", summary="A template's recent runs")
async def list_runs(name: Name, runtime: RuntimeDep, session: OperatorSession) -> dict:
    return {"runs": await runtime.manager.db(runs_of, runtime.store, name)}


@router.get("/operator/api/runs/{run_id}", summary="A run: progress, each case for draft and live, totals")
async def get_run(run_id: RowId, runs: RunsDep, session: OperatorSession) -> dict:
    found = await runs.view(run_id)
    if found is None:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such run."})
    return found


@router.post("/operator/api/runs/{run_id}/cancel", summary="Stop a run (what was decided is kept)")
async def cancel_run(run_id: RowId, runs: RunsDep, session: OperatorSession) -> dict:
    if not await runs.cancel(run_id, session.user.name):
        raise HTTPException(409, detail={"error": "not_running", "message": "This run is not going."})
    return {"ok": True}


@router.post("/operator/api/templates/{name}/publish-check",
             summary="What the newest finished run of exactly this draft says against the live version")
async def check_publish(name: Name, body: YamlIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    def read() -> dict:
        live = next(iter(runtime.store.published_template_versions(name)), None)
        return publish_check(runtime.store, name, body.yaml, live["version"] if live else None)

    return {"check": await runtime.manager.db(read), "gate": runtime.settings.publish_gate}


@router.post("/operator/api/draft/threshold", summary="The draft with another confidence threshold")
async def draft_threshold(body: ThresholdIn, session: OperatorSession) -> dict:
    await parse_draft(body.yaml)
    return {"yaml": set_confidence_threshold(body.yaml, body.threshold)}

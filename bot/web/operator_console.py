"""The operator console's API: templates (validate, try, publish, history, restore), the
active template per channel, and statistics. Regression sets have their own module
(regression_console.py).

"Try it" uses the unsaved draft and the real engine, so an operator sees what users would get
before publishing. Every change is audited with its author.

A draft is read and rendered off the event loop with a time limit (bot.template_work), and a
draft that passes a size or complexity limit is bad input: 400, naming the limit and where.
The engine is shared with the bot under the budget of the /v1 API (api_share.ApiShare): "try
it" holds places in the engine's queue only from that share, so an operator can never push
customers into "busy" hand-overs.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from engine.images import ImageRejected
from engine.screenshots import reading_limits

from .. import queries
from ..operator_stats import stats
from ..regression.runner import publish_check
from ..accounts import Session
from ..language import detect_language
from ..store import Store
from ..template_work import off_loop
from ..templates import Template, TemplateError
from ..regression.turn import PreparedScreenshots, TemplateTurn
from .auth import console_page, current_session, require
from .api_share import ApiShare
from .progress_stream import EVENT_STREAM, Progress, progress_response, wants_events
from .params import Days, Name, RowIdField
from ..runtime import Runtime
from .deps import RuntimeDep, ServerDep

OperatorSession = Annotated[Session, Depends(require("operator"))]
router = APIRouter(tags=["operator console"])
MAX_TRY_IMAGES = 4
PLACE_WAIT_S = 10.0  # how long "try it" waits for a place in the engine's queue before answering 429


class YamlIn(BaseModel):
    yaml: str  # bounded by the request's body limit, then by the template's own size limit (400)


class RestoreIn(BaseModel):
    version: RowIdField


class ChannelIn(BaseModel):
    channel: str = Field(min_length=1, max_length=64)
    template: str = Field(min_length=1, max_length=64)


def _issues(error: TemplateError) -> list[dict]:
    return [{"field": i.field, "message": i.message, "line": i.line} for i in error.errors]


def _invalid(error: TemplateError) -> HTTPException:
    return HTTPException(422, detail={"error": "invalid_template", "message": "The template has problems.",
                                      "issues": _issues(error)})


def _refusal(error: TemplateError) -> HTTPException:
    """400 for a draft past a size or complexity limit (it names which, and where), else 422."""
    if not error.limits:
        return _invalid(error)
    where = "; ".join(str(issue) for issue in error.limits)
    return HTTPException(400, detail={"error": "template_too_complex",
                                      "message": f"The template is too big or too complex: {where}.",
                                      "issues": _issues(error)})


async def parse_draft(yaml_text: str) -> Template:
    try:
        return await off_loop(Template.from_yaml, yaml_text)
    except TemplateError as exc:
        raise _refusal(exc) from None


async def _system_prompt(template: Template, language: str) -> str:
    try:
        return await off_loop(template.render_system_prompt, language, channel="widget")
    except TemplateError as exc:
        raise _refusal(exc) from None


def _busy(share: ApiShare) -> HTTPException:
    return HTTPException(429, headers={"Retry-After": "1"}, detail={
        "error": "busy",
        "message": f"The model is busy: \"try it\", regression runs and the API may hold {share.limit} places in "
                   "its queue and all are taken (the rest is kept for customers). Try again in a moment.",
    })


def _channels(runtime: Runtime) -> list[str]:
    names = set(runtime.manager.channels.names())
    names.update(queries.configured_channels(runtime.store))
    return sorted(names)


def template_overview(runtime: Runtime) -> dict:
    store, templates = runtime.store, runtime.manager.templates
    names = set(templates.library.names()) | set(queries.stored_template_names(store))
    channels = [{"channel": c, "template": templates.template_name_for(c)} for c in _channels(runtime)]
    out = []
    for name in sorted(names):
        live = next(iter(store.published_template_versions(name)), None)
        candidates = templates.candidates(name)
        template = candidates[0][0] if candidates else None
        out.append({
            "name": name,
            "title": template.title if template else {"en": name},
            "description": template.description if template else {},
            "published_version": live["version"] if live else None,
            "versions": len(store.template_versions(name)),
            "channels": [c["channel"] for c in channels if c["template"] == name],
        })
    return {"templates": out, "channels": channels}


@dataclass(frozen=True)
class TryQuestion:
    """What "try it" was asked, read whole before answering (a streamed answer can no longer read
    the request): the draft, the question, its language (en, zh or auto) and the screenshots."""

    yaml: str
    text: str
    language: str
    files: tuple[tuple[str, bytes], ...]  # (file name, bytes)


async def _try_question(request: Request, settings) -> TryQuestion:
    form = await request.form(max_files=MAX_TRY_IMAGES + 1, max_part_size=settings.image_max_bytes + 1)
    uploads = [v for k, v in form.multi_items() if k == "images" and hasattr(v, "read")]
    if len(uploads) > MAX_TRY_IMAGES:
        raise HTTPException(413, detail={"error": "too_many_images", "message": f"At most {MAX_TRY_IMAGES} images."})
    return TryQuestion(str(form.get("yaml") or ""), str(form.get("text") or "")[: settings.widget_max_text_chars],
                       str(form.get("language") or "auto"),
                       tuple([(upload.filename or "screenshot", await upload.read()) for upload in uploads]))


async def _try_screenshots(runtime: Runtime, turn: TemplateTurn, files: tuple[tuple[str, bytes], ...],
                           tell: Progress) -> PreparedScreenshots:
    """Each screenshot read and redacted as a turn's are; one that is not an image we take is a 400
    naming the file (the operator picked the wrong one), where a user's would be an unreadable image."""
    prepared = PreparedScreenshots()
    for number, (name, data) in enumerate(files, start=1):
        tell("screenshot", {"number": number, "of": len(files)})
        one = await turn.prepare([data])
        if one.refused:
            why = ImageRejected(one.refused[0], reading_limits(runtime.manager.core.options.image_limits))
            raise HTTPException(400, detail={"error": why.reason, "message": f"{name}: {why.message()}"})
        prepared.readings += one.readings
        prepared.read_s += one.read_s
    return prepared


async def try_turn(runtime: Runtime, share: ApiShare, question: TryQuestion, progress: Progress | None = None) -> dict:
    """One question against a draft, as the first turn of a new widget conversation would go
    (regression.turn.TemplateTurn): the screenshots read and redacted, the checks that need no
    model, the help centre, the engine with a place from the API's share, then the escalation
    policy. `progress` is told each stage as it happens: draft (checked), screenshot (each one),
    screenshots (all read), queued (waiting for a place), generating, text (a delta of the reply,
    not yet decided). Anything the operator must fix is an HTTPException, as the JSON route answers.
    """
    tell: Progress = progress or (lambda stage, details: None)
    template = await parse_draft(question.yaml)
    text = question.text
    language = question.language if question.language in ("en", "zh") else detect_language(text)
    await _system_prompt(template, language)  # a draft that does not render stops here, within the time limit
    tell("draft", {"language": language})
    turn = TemplateTurn.for_settings(runtime.manager, runtime.settings)
    screenshots = await _try_screenshots(runtime, turn, question.files, tell)
    if not text.strip() and not screenshots.readings:
        raise HTTPException(400, detail={"error": "empty", "message": "Type a question or add a screenshot."})
    if screenshots.readings:
        tell("screenshots", {"count": len(screenshots.readings), "unreadable": screenshots.unreadable,
                             "read": list(screenshots.summary())})
    when: dict[str, float] = {}

    def relay(stage: str, details: dict) -> None:
        when.setdefault(stage, time.perf_counter())
        tell(stage, details)

    try:
        result = await turn.run(template, text, language, screenshots,
                                places=share.places(PLACE_WAIT_S, lambda: _busy(share)), progress=relay)
    except TemplateError as exc:
        raise _refusal(exc) from None
    first_token = when["text"] - when["generating"] if "text" in when and "generating" in when else None
    return {
        "reply": result.reply,
        "confidence": result.confidence,
        "min_token_prob": result.min_token_prob,
        "decision": {"handover": result.outcome == "handover", "reason": result.reason, "detail": result.detail},
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_ms": round(result.latency_s * 1000, 1) if result.latency_s is not None else None,
        "first_token_ms": round(first_token * 1000, 1) if first_token is not None else None,
        "error": result.error,
        "screenshots": list(result.screenshots),
        "cited": list(result.cited),
    }


def versions(store: Store, name: str) -> list[dict]:
    rows = store.template_versions(name)
    live = next(iter(store.published_template_versions(name)), None)
    out, previous = [], None
    for row in rows:
        diff = "" if previous is None else "".join(difflib.unified_diff(
            previous["body"].splitlines(keepends=True), row["body"].splitlines(keepends=True),
            fromfile=f"version {previous['version']}", tofile=f"version {row['version']}",
        ))
        out.append({"version": row["version"], "author": row["author"] or "", "created_at": row["created_at"],
                    "published_at": row["published_at"], "live": bool(live and live["version"] == row["version"]),
                    "diff": diff})
        previous = row
    return list(reversed(out))


@router.get("/operator", response_class=HTMLResponse, include_in_schema=False)
async def operator_page(session: Annotated[Session | None, Depends(current_session)]) -> Response:
    return console_page(session, "operator", "/operator", "operator.html")


@router.get("/operator/api/templates", summary="Templates, their live versions and the channels using them")
async def list_templates(runtime: RuntimeDep, session: OperatorSession) -> dict:
    return await runtime.manager.db(template_overview, runtime)


@router.get("/operator/api/templates/{name}", summary="A template's live version as YAML")
async def get_template(name: Name, runtime: RuntimeDep, session: OperatorSession) -> dict:
    live = await runtime.manager.db(runtime.store.published_template_versions, name)
    if not live:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such template."})
    return {"name": name, "published_version": live[0]["version"], "yaml": live[0]["body"]}


def _preview(yaml_text: str) -> dict[str, str]:
    template = Template.from_yaml(yaml_text)
    return {lang: template.render_system_prompt(lang) for lang in ("en", "zh")}


@router.post("/operator/api/validate", summary="Check a draft and preview its system prompts")
async def validate(body: YamlIn, session: OperatorSession) -> dict:
    try:
        preview = await off_loop(_preview, body.yaml)
    except TemplateError as exc:
        if exc.limits:
            raise _refusal(exc) from None
        return {"ok": False, "issues": _issues(exc), "preview": None}
    return {"ok": True, "issues": [], "preview": preview}


TRY_EVENTS = {"description": "With `Accept: text/event-stream`: server-sent events `draft`, `screenshot`, "
              "`screenshots`, `queued`, `generating`, `text` (`{\"delta\"}`: the reply as it is written, not yet "
              "decided), then `result` (the JSON answer) or `error` (`{\"status\", \"error\", \"message\"}`, "
              "what the JSON answer's error would be). Closing the stream cancels the turn.",
              "content": {EVENT_STREAM: {"schema": {"type": "string"}}}}


@router.post("/operator/api/try", response_model=None, responses={200: TRY_EVENTS},
             summary="Run a question (and screenshots) against an unsaved draft, as one answer or as events")
async def try_it(request: Request, runtime: RuntimeDep, server: ServerDep,
                 session: OperatorSession) -> dict | StreamingResponse:
    question = await _try_question(request, runtime.settings)
    if wants_events(request):
        return progress_response(lambda progress: try_turn(runtime, server.api_share, question, progress))
    return await try_turn(runtime, server.api_share, question)


class PublishIn(YamlIn):
    confirm: bool = False  # publish even though its regression run does worse than the live version


def _gate(check: dict, gate: str, confirmed: bool) -> HTTPException | None:
    """Why publishing must stop for this draft's regression run, or None."""
    worse = check["comparison"]["worse"]
    why = "; ".join(check["comparison"]["why"])
    if gate == "block" and check["run_id"] is None:
        return HTTPException(409, detail={"error": "run_required", "message": "Run the regression set against this "
                                          "draft first: publishing needs a finished run that does not do worse than "
                                          "the live version.", "check": check})
    if worse and gate == "block":
        return HTTPException(409, detail={"error": "worse_than_live", "message": "This draft does worse than the live "
                                          f"version in its regression run ({why}), and publishing such a draft is "
                                          "blocked.", "check": check})
    if worse and not confirmed:
        return HTTPException(409, detail={"error": "confirm_worse", "message": "This draft does worse than the live "
                                          f"version in its regression run ({why}). Publish it anyway?", "check": check})
    return None


@router.post("/operator/api/templates/{name}/publish", summary="Publish a draft as a new version")
async def publish(name: Name, body: PublishIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    template = await parse_draft(body.yaml)
    if template.name != name:
        raise HTTPException(422, detail={"error": "invalid_template", "message": "The name in the YAML must stay "
                                         f"'{name}'.", "issues": [{"field": "name", "message": "must not change",
                                                                    "line": None}]})

    def apply() -> int | HTTPException:
        live = next(iter(runtime.store.published_template_versions(name)), None)
        check = publish_check(runtime.store, name, body.yaml, live["version"] if live else None)
        stop = _gate(check, runtime.settings.publish_gate, body.confirm)
        if stop is not None:
            return stop
        version = runtime.store.add_template_version(name, body.yaml, author=session.user.name, publish=True)
        runtime.store.audit(session.user.name, "template_publish", f"template:{name}", version=version,
                            run=check["run_id"], worse_confirmed=check["comparison"]["worse"])
        return version

    outcome = await runtime.manager.db(apply)
    if isinstance(outcome, HTTPException):
        raise outcome
    return {"version": outcome}


@router.get("/operator/api/templates/{name}/versions", summary="Every version with author, time and diff")
async def list_versions(name: Name, runtime: RuntimeDep, session: OperatorSession) -> dict:
    found = await runtime.manager.db(versions, runtime.store, name)
    if not found:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such template."})
    return {"versions": found}


@router.post("/operator/api/templates/{name}/restore", summary="Publish an old version again, as a new version")
async def restore(name: Name, body: RestoreIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    old = await runtime.manager.db(queries.template_version_body, runtime.store, name, body.version)
    if old is not None:
        await parse_draft(old)  # a version stored before today's limits may be past them

    def apply() -> int | None:
        stored = queries.template_version_body(runtime.store, name, body.version)
        if stored is None:
            return None
        version = runtime.store.add_template_version(name, stored, author=session.user.name, publish=True)
        runtime.store.audit(session.user.name, "template_restore", f"template:{name}",
                            restored=body.version, version=version)
        return version

    version = await runtime.manager.db(apply)
    if version is None:
        raise HTTPException(404, detail={"error": "not_found", "message": "No such version."})
    return {"version": version}


@router.post("/operator/api/channels", summary="Set the active template of a channel")
async def set_channel(body: ChannelIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    def apply() -> bool:
        if not runtime.store.published_template_versions(body.template):
            return False
        runtime.store.set_channel_template(body.channel, body.template)
        runtime.store.audit(session.user.name, "channel_template", f"channel:{body.channel}", template=body.template)
        return True

    if not await runtime.manager.db(apply):
        raise HTTPException(404, detail={"error": "not_found", "message": "No such template."})
    return {"ok": True}


@router.get("/operator/api/stats",
            summary="How the bot does: what became of each message, resolution, satisfaction, time to first answer, "
                    "hand-overs by reason, each per template version")
async def get_stats(runtime: RuntimeDep, session: OperatorSession, days: Days = 14) -> dict:
    return await runtime.manager.db(stats, runtime.store, max(1, min(days, 365)))

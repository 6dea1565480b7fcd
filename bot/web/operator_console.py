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

import asyncio
import difflib
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from engine.base import ChatMessage, EngineError, GenerationRequest, SamplingParams
from engine.images import ImageRejected, prepare_image

from .. import queries
from ..operator_stats import stats
from ..regression.runner import publish_check
from ..accounts import Session
from ..escalation import Decision
from ..language import detect_language
from ..store import Store
from ..template_work import off_loop
from ..templates import Template, TemplateError
from .auth import console_page, current_session, require
from .api_share import ApiShare, Ticket
from .openai_errors import ApiError
from .params import Days, Name, RowIdField
from ..runtime import Runtime
from .deps import RuntimeDep, ServerDep

OperatorSession = Annotated[Session, Depends(require("operator"))]
router = APIRouter(tags=["operator console"])
MAX_TRY_IMAGES = 4
PLACE_WAIT_S = 10.0  # how long "try it" waits for a place in the engine's queue before answering 429
PLACE_POLL_S = 0.05


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


async def engine_place(share: ApiShare) -> Ticket:
    """A place in the engine's queue out of the /v1 API's share, waiting a while for one to free."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLACE_WAIT_S
    while True:
        try:
            return share.acquire()
        except ApiError:
            if loop.time() >= deadline:
                raise HTTPException(429, headers={"Retry-After": "1"}, detail={
                    "error": "busy",
                    "message": f"The model is busy: \"try it\", regression runs and the API may hold {share.limit} "
                               "places in its queue and all are taken (the rest is kept for customers). Try again "
                               "in a moment.",
                }) from None
            await asyncio.sleep(PLACE_POLL_S)


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


def _decide(runtime: Runtime, template: Template, text: str, generation, error) -> Decision:
    return runtime.manager.policy.decide(
        user_text=text, generation=generation, error=error,
        threshold=template.escalation.confidence_threshold, decline_marker=template.escalation.decline_marker,
        unknown_confidence_hands_over=runtime.settings.unknown_confidence_hands_over,
    )


async def _run(runtime: Runtime, share: ApiShare, template: Template, text: str, language: str, images: list) -> dict:
    """One turn against a draft template, through the real engine and escalation policy.

    The engine is used only with a place from the API's share (see `engine_place`).
    """
    language = detect_language(text) if language not in ("en", "zh") else language
    system = await _system_prompt(template, language)
    request = GenerationRequest(
        (ChatMessage.of("system", system), ChatMessage.of("user", *images, text)),
        max_new_tokens=min(template.generation.max_new_tokens, runtime.settings.max_new_tokens),
        sampling=SamplingParams(temperature=template.generation.temperature, top_p=template.generation.top_p),
    )
    generation, error = None, None
    ticket = await engine_place(share)
    try:
        generation = await runtime.engine.generate(request, timeout=runtime.settings.request_timeout_s)
    except EngineError as exc:
        error = exc
    finally:
        ticket.release()
    decision = _decide(runtime, template, text, generation, error)
    return {
        "reply": generation.text if generation else "",
        "confidence": generation.confidence if generation else None,
        "min_token_prob": generation.min_token_prob if generation else None,
        "decision": {"handover": decision.handover, "reason": decision.reason.value if decision.reason else None,
                     "detail": decision.detail},
        "prompt_tokens": generation.prompt_tokens if generation else 0,
        "completion_tokens": generation.completion_tokens if generation else 0,
        "latency_ms": round(generation.timings.total_ms, 1) if generation else None,
        "first_token_ms": round(generation.timings.first_token_ms, 1) if generation else None,
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


@router.post("/operator/api/try", summary="Run a question (and screenshots) against an unsaved draft")
async def try_it(request: Request, runtime: RuntimeDep, server: ServerDep, session: OperatorSession) -> dict:
    form = await request.form(max_files=MAX_TRY_IMAGES + 1, max_part_size=runtime.settings.image_max_bytes + 1)
    template = await parse_draft(str(form.get("yaml") or ""))
    text = str(form.get("text") or "")[: runtime.settings.widget_max_text_chars]
    uploads = [v for k, v in form.multi_items() if k == "images" and hasattr(v, "read")]
    if len(uploads) > MAX_TRY_IMAGES:
        raise HTTPException(413, detail={"error": "too_many_images", "message": f"At most {MAX_TRY_IMAGES} images."})
    images = []
    for upload in uploads:
        try:
            prepared = await asyncio.to_thread(prepare_image, await upload.read(), runtime.settings.image_limits())
        except ImageRejected as exc:
            raise HTTPException(400, detail={"error": exc.reason, "message": f"{upload.filename}: {exc.message()}"}) from None
        images.append(prepared.image)
    if not text.strip() and not images:
        raise HTTPException(400, detail={"error": "empty", "message": "Type a question or add a screenshot."})
    return await _run(runtime, server.api_share, template, text, str(form.get("language") or "auto"), images)


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

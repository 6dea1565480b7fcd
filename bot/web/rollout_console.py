"""The operator console's Rollout tab: give a template version (stored, or the draft in the
editor) to a share of a channel's new conversations, watch both arms side by side, then
promote it to everyone or roll it back.

The rules live in bot/rollouts.py; this module checks the request the way publishing does
(the draft is parsed by the same helper, so what could not be published cannot be rolled
out), maps a lost race to 409, and answers with the figures of bot/rollout_stats.py.
Operators and admins only, CSRF like every console change; each step is audited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from .. import rollouts
from ..rollout_stats import arm_figures
from ..runtime import Runtime
from ..store import Store
from .deps import RuntimeDep
from .operator_console import OperatorSession, parse_draft, template_overview
from .params import RowId, RowIdField

router = APIRouter(tags=["operator console: rollout"])
PREFIX = "/operator/api/rollouts"
Percent = Annotated[float, Field(ge=1, le=99, description="the share of new conversations, 1 to 99 percent")]


class StartIn(BaseModel):
    template: str = Field(min_length=1, max_length=64)
    channel: str = Field(min_length=1, max_length=64)
    percent: Percent
    version: RowIdField | None = None  # a stored version, or
    yaml: str | None = None  # the editor's draft, stored as a new unpublished version


class PercentIn(BaseModel):
    percent: Percent


def _refused(status: int, error: str, message: str) -> HTTPException:
    return HTTPException(status, detail={"error": error, "message": message})


def _http(exc: rollouts.RolloutError) -> HTTPException:
    if isinstance(exc, rollouts.NoSuchRollout):
        return _refused(404, "not_found", str(exc))
    if isinstance(exc, rollouts.RolloutConflict):
        return _refused(409, "conflict", str(exc))
    return _refused(422, "invalid_rollout", str(exc))


def _described(store: Store, rollout: rollouts.Rollout) -> dict:
    return {**rollout.as_dict(), "live_version": rollouts.live_version(store, rollout.template),
            "arms": arm_figures(store, rollout)}


def overview(store: Store) -> dict:
    """Active rollouts first (by channel), then the latest ended ones, each with both arms' figures."""
    return {"rollouts": [_described(store, rollout) for rollout in rollouts.listed(store)]}


def _check_channel(runtime: Runtime, channel: str, template: str) -> None:
    """A rollout only takes effect on a channel that answers with its template."""
    found = {c["channel"]: c["template"] for c in template_overview(runtime)["channels"]}
    if channel not in found:
        raise _refused(422, "invalid_rollout", f"There is no channel {channel}.")
    if found[channel] != template:
        raise _refused(422, "invalid_rollout", f"Channel {channel} answers with template {found[channel]}, "
                                               f"not {template}: choose that template for it first.")


@router.get(PREFIX, summary="Rollouts (active first) with the figures of both arms")
async def list_rollouts(runtime: RuntimeDep, session: OperatorSession) -> dict:
    return await runtime.manager.db(overview, runtime.store)


@router.post(PREFIX, summary="Roll out a stored version or a draft to a share of a channel's new conversations")
async def start_rollout(body: StartIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    if (body.version is None) == (body.yaml is None):
        raise _refused(422, "invalid_rollout", "Give either a stored version or the draft to roll out.")
    if body.yaml is not None:
        template = await parse_draft(body.yaml)
        if template.name != body.template:
            raise _refused(422, "invalid_rollout", f"The draft is template '{template.name}', not '{body.template}'.")

    def apply() -> dict:
        _check_channel(runtime, body.channel, body.template)
        return _described(runtime.store, rollouts.start(
            runtime.store, template=body.template, channel=body.channel, percent=body.percent,
            actor=session.user.name, version=body.version, body=body.yaml))

    return await _applied(runtime, apply)


async def _applied(runtime: Runtime, apply) -> dict:
    """Run a change on the database thread; a refused one answers 404, 409 or 422."""
    try:
        return await runtime.manager.db(apply)
    except rollouts.RolloutError as exc:
        raise _http(exc) from None


@router.post(PREFIX + "/{rollout_id}/percent", summary="Change the share of new conversations that draw the candidate")
async def change_percent(rollout_id: RowId, body: PercentIn, runtime: RuntimeDep, session: OperatorSession) -> dict:
    return await _applied(runtime, lambda: _described(
        runtime.store, rollouts.set_percent(runtime.store, rollout_id, body.percent, session.user.name)))


@router.post(PREFIX + "/{rollout_id}/promote", summary="Publish the candidate: everyone gets it")
async def promote(rollout_id: RowId, runtime: RuntimeDep, session: OperatorSession) -> dict:
    return await _applied(runtime, lambda: _described(
        runtime.store, rollouts.promote(runtime.store, rollout_id, session.user.name)))


@router.post(PREFIX + "/{rollout_id}/rollback", summary="End the rollout: everyone gets the live version")
async def roll_back(rollout_id: RowId, runtime: RuntimeDep, session: OperatorSession) -> dict:
    return await _applied(runtime, lambda: _described(
        runtime.store, rollouts.roll_back(runtime.store, rollout_id, session.user.name)))

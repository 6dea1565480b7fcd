"""`snapdesk eval`: a template's regression set from the command line, for CI pipelines.

A pipeline that changes a template (or the model, or the help centre) needs an answer it can
act on: the exit status says every case passed (0), a case failed (1) or the set could not run
at all (2), and --junit writes the cases as tests its CI shows. The run is the operator
console's run with one version: the same cases (the shipped files, or --cases, and the
operators' own from the data directory), the same turn with the configured model, OCR and help
centre, the same checks and figures. Whatever can make the set unrunnable is checked before the
model loads, so a typo costs no load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.base import Engine, ModelLoadError

from . import queries
from .conversation import ConversationManager
from .engine_setup import make_engine, make_manager
from .messages import ChannelRegistry
from .regression import junit
from .regression.cases import SHIPPED_DIRECTORY, Case, CaseError, regression_set
from .regression.checks import Verdict
from .regression.report import summary
from .regression.runner import Arm, OnResult, SetCannotRun, evaluate
from .regression.turn import TemplateTurn, TurnResult, free_places
from .settings import Settings
from .store import StoreError
from .template_issues import did_you_mean
from .templates import Template, TemplateError

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
Row = tuple[Case, TurnResult, Verdict]


@dataclass(frozen=True)
class Plan:
    """What one run needs, settled before the model loads."""

    template: str
    arm: Arm
    cases: list[Case]

    @property
    def suite(self) -> str:
        """"billing live (version 3)", "billing version 2", "billing draft"."""
        where = f"live (version {self.arm.version})" if self.arm.name == "live" and self.arm.version else self.arm.name
        return f"{self.template} {where}"


def _one_line(error: TemplateError) -> str:
    more = len(error.errors) - 1
    return str(error.errors[0]) + (f" (and {more} more problem{'s' if more != 1 else ''})" if more else "")


def _draft(path: str, template: str) -> Template:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SetCannotRun(f"cannot read the draft {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        draft = Template.from_yaml(text)
    except TemplateError as exc:
        raise SetCannotRun(f"the draft {path} is not a usable template: {_one_line(exc)}") from None
    if draft.name != template:
        raise SetCannotRun(f"the draft {path} is the template {draft.name}, not {template}")
    return draft


def _arm(manager: ConversationManager, template: str, draft: str | None, version: int | None) -> Arm:
    if draft:  # a new template's first draft may have no version yet
        return Arm("draft", _draft(draft, template), None)
    known = tuple(sorted({*manager.templates.library.names(), *queries.stored_template_names(manager.store)}))
    if template not in known:
        raise SetCannotRun(f"there is no template {template}{did_you_mean(template, known)}; "
                           f"the templates are {', '.join(known)}")
    if version is None:
        for found, live in manager.templates.candidates(template):
            return Arm("live", found, live or None)
        raise SetCannotRun(f"the template {template} has no published version that can be read")
    body = queries.template_version_body(manager.store, template, version)
    if body is None:
        versions = ", ".join(str(row["version"]) for row in manager.store.template_versions(template)) or "none"
        raise SetCannotRun(f"the template {template} has no version {version} (its versions: {versions})")
    try:
        return Arm(f"version {version}", Template.from_yaml(body), version)
    except TemplateError as exc:
        raise SetCannotRun(f"version {version} of {template} cannot be read: {_one_line(exc)}") from None


def plan(manager: ConversationManager, template: str, *, draft: str | None = None, version: int | None = None,
         cases: str | None = None) -> Plan:
    """The version (the live one unless a draft file or a stored version is named) and the cases
    to run, read before the event loop starts; SetCannotRun says why there is nothing to run."""
    directory = Path(cases) if cases else SHIPPED_DIRECTORY
    if cases and not directory.is_dir():
        raise SetCannotRun(f"--cases {cases}: no such folder")
    arm = _arm(manager, template, draft, version)
    try:
        found = regression_set(manager.store, template, directory)
    except CaseError as exc:
        raise SetCannotRun(str(exc)) from None
    if not found:
        raise SetCannotRun(f"the template {template} has no regression cases "
                           f"(none in {directory / (template + '.yaml')}, none of the operators' own)")
    return Plan(template, arm, found)


async def load(engine: Engine, manager: ConversationManager) -> None:
    """The model, and the screenshot reader when OCR is on, loaded side by side off the loop."""
    reader = manager.screenshots.reader
    loads = [asyncio.to_thread(engine.start), *([asyncio.to_thread(reader.load)] if reader is not None else [])]
    model, *ocr = await asyncio.gather(*loads, return_exceptions=True)
    if isinstance(model, Exception):
        why = str(model) if isinstance(model, ModelLoadError) else f"{type(model).__name__}: {model}"
        raise SetCannotRun(f"the model cannot be loaded: {why}")
    if ocr and isinstance(ocr[0], Exception):
        raise SetCannotRun(f"the screenshot reader (SNAPDESK_OCR=on) cannot be loaded: {ocr[0]!r}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _case_line(case: Case, result: TurnResult, verdict: Verdict) -> str:
    why = ": ".join(part for part in (result.reason, result.detail) if part)
    outcome = f"{result.outcome} ({why})" if result.outcome == "handover" else result.outcome
    confidence = "n/a" if result.confidence is None else f"{result.confidence:.3f}"
    latency = "n/a" if result.latency_s is None else f"{result.latency_s:.2f} s"
    lines = [f"{'PASS' if verdict.passed else 'FAIL'}  {case.label}  {outcome}  confidence {confidence}  {latency}"]
    lines += [f"      {failure}" for failure in verdict.failures]
    return "\n".join(lines)


def _totals(suite: str, figures: dict[str, Any]) -> str:
    advice = figures["threshold_advice"]
    if advice:
        advised = (f"{advice['threshold']:.3f} keeps {advice['kept']} of {advice['of']} answers at "
                   f"{advice['precision']:.0%} precision (target {advice['target_precision']:.0%}, "
                   f"this version {figures['threshold']})")
    else:
        advised = "none (no answers with a confidence)" if not figures["calibration_cases"] else \
            "none (no threshold reaches the target precision)"
    auroc = figures["confidence_auroc"]
    errors = f", {figures['engine_errors']} engine errors" if figures["engine_errors"] else ""
    return "\n".join([
        f"{suite}: {_count(figures['cases'], 'case')}, {figures['passed']} passed, {figures['failed']} failed{errors}",
        f"pass rate {_percent(figures['pass_rate'])} · hand-over precision {_percent(figures['handover_precision'])}"
        f" ({figures['handovers']} handed over) · recall {_percent(figures['handover_recall'])}"
        f" ({figures['handovers_expected']} expected)",
        f"answer checks {figures['answer_checks_passed']} of {figures['answer_checks']} held"
        f" ({_percent(figures['answer_check_rate'])}) · confidence AUROC "
        f"{'n/a' if auroc is None else f'{auroc:.3f}'} over {_count(figures['calibration_cases'], 'answer')}",
        f"threshold advice: {advised}",
    ])


def _document(chosen: Plan, rows: list[Row], figures: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "template": chosen.template, "arm": chosen.arm.name, "version": chosen.arm.version, "model": settings.model,
        "ocr": settings.ocr, "passed": all(v.passed for _, _, v in rows),
        "cases": [{"case": c.as_dict(), "result": r.as_dict(),
                   "verdict": {"passed": v.passed, "failures": list(v.failures), "checks": v.checks,
                               "checks_passed": v.checks_passed}} for c, r, v in rows],
        "summary": figures,
    }


async def run_set(chosen: Plan, manager: ConversationManager, settings: Settings,
                  on_result: OnResult | None = None) -> list[Row]:
    """Every case of the plan under its version (the engine is this process's own: no places to
    share), in the set's order; `on_result` hears each as it is decided."""
    results = await evaluate(TemplateTurn.for_settings(manager, settings), chosen.cases, [chosen.arm],
                             places=free_places, on_result=on_result)
    order = {case.key: index for index, case in enumerate(chosen.cases)}
    return sorted(((c, r, v) for c, _, r, v in results), key=lambda row: order[row[0].key])


async def _run(chosen: Plan, engine: Engine, manager: ConversationManager, settings: Settings,
               args: argparse.Namespace) -> int:
    if not args.json:
        print(f"{chosen.suite}: {_count(len(chosen.cases), 'case')} on {settings.model}", flush=True)
    await load(engine, manager)
    started, began = datetime.now(timezone.utc), time.perf_counter()

    def heard(case: Case, arm: str, result: TurnResult, verdict: Verdict) -> None:
        if not args.json:
            print(_case_line(case, result, verdict), flush=True)

    rows = await run_set(chosen, manager, settings, heard)
    figures = summary(rows, settings.eval_target_precision, chosen.arm.template.escalation.confidence_threshold)
    if args.junit:
        tree = junit.report(chosen.suite, chosen.template, rows, figures, time_s=time.perf_counter() - began,
                            started=started, properties={"version": chosen.arm.version, "draft": args.draft,
                                                         "model": settings.model})
        try:
            junit.write(tree, Path(args.junit))
        except OSError as exc:
            raise SetCannotRun(f"cannot write the JUnit report {args.junit}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(_document(chosen, rows, figures, settings), ensure_ascii=False, indent=2))
    else:
        print(_totals(chosen.suite, figures))
    return EXIT_PASSED if figures["failed"] == 0 else EXIT_FAILED


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings)
    manager = None
    try:
        manager = make_manager(settings, engine, ChannelRegistry())
        chosen = plan(manager, args.template, draft=args.draft, version=args.version, cases=args.cases)
        return asyncio.run(_run(chosen, engine, manager, settings, args))
    except (SetCannotRun, StoreError) as exc:
        print(f"snapdesk: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    finally:
        engine.close()
        if manager is not None:
            if manager.screenshots.reader is not None:
                manager.screenshots.reader.close()
            manager.close()
            manager.store.close()


def add_parser(commands) -> None:
    run = commands.add_parser(
        "eval", help="run a template's regression set (for CI): exit 0 all passed, 1 a case failed, 2 cannot run")
    run.add_argument("template", metavar="TEMPLATE")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--draft", metavar="FILE", help="run this template YAML instead of the live version")
    which.add_argument("--version", type=int, metavar="N", help="run stored version N instead of the live version")
    run.add_argument("--json", action="store_true", help="one JSON document on stdout: cases, results, summary")
    run.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one test per case)")
    run.add_argument("--cases", metavar="DIR", help="case files to use instead of the shipped prompts/cases/ "
                     "(DIR/TEMPLATE.yaml, screenshots in DIR/screenshots/); the operators' own cases still run")
    run.add_argument("--model", help="hub id or local directory of a Qwen3-VL checkpoint (default: SNAPDESK_MODEL)")
    run.add_argument("--data", help="data directory (default: SNAPDESK_DATA_DIR or ./data)")

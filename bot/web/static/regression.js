/*
 * The operator console's regression set card: the open template's cases, runs of the draft
 * against the live version (progress, cancel, recent runs), the results side by side with the
 * figures of both versions and how each is counted, threshold advice, and the publish gate's
 * confirmation.
 *
 * A run belongs to the server: it goes on when the page closes, and reopening the template
 * lists it (a run still going is followed again). The draft is always read through the
 * editor's own accessor (hooks.draft), the text Publish sends, since the publish gate looks for
 * a run of exactly that text.
 *
 * An ES module imported by operator.js, which owns the editor and the API client. Cases,
 * replies, failures and reasons come from users and the model: text nodes only, the reply diff
 * included (<ins>/<del> elements filled with textContent).
 */
import {
  $, el, setText, str, isNum, clear, setStatus, setBusy, reasonLabel, channelLabel, confidenceClass, parseTime,
  showError, clearError, toast
} from "./console-common.js";
import { duration } from "./stats.js";

const POLL_MS = 1000;
const MAX_DIFF_CELLS = 1000000; // word pairs compared for one reply diff; beyond it the replies are shown whole
const GATE = ["confirm_worse", "worse_than_live", "run_required"];
const STATUS = {
  running: "Running", done: "Done", cancelled: "Cancelled", failed: "Failed",
  interrupted: "Interrupted (the server stopped)"
};
const CHANGES = {
  fixed: { label: "Fixed", how: "fails live, passes with the draft" },
  broken: { label: "Broken", how: "passes live, fails with the draft" },
  changed: { label: "Changed", how: "another outcome or reply, same verdict" },
  same: { label: "Same", how: "same outcome, reply and verdict" },
  incomplete: { label: "Not decided", how: "one version has no result (the run stopped first)" }
};
const FILTERS = {
  all: function () { return true; },
  changed: function (c) { return c.change !== "same"; },
  failing: function (c) { return !c.draft || c.draft.passed !== true; }
};
// The figures of a run for one version (bot/regression/report.py), each with how it is counted.
const FIGURES = [
  {
    key: "pass_rate", label: "Pass rate",
    value: function (s) { return pct(s.pass_rate) + " · " + s.passed + " of " + plural(s.cases, "case", "cases"); },
    how: "Cases that passed every check, of all cases. An engine failure or timeout is a failure."
  },
  {
    key: "handover_precision", label: "Hand-over precision",
    value: function (s) {
      return s.handovers ? pct(s.handover_precision) + " of " + plural(s.handovers, "hand-over", "hand-overs") : "No hand-overs";
    },
    how: "Of the cases the version handed over, those that should be handed over. A hand-over caused by an engine failure is not counted as one."
  },
  {
    key: "handover_recall", label: "Hand-over recall",
    value: function (s) {
      return s.handovers_expected ? pct(s.handover_recall) + " of " + plural(s.handovers_expected, "case", "cases") + " to hand over" : "No case expects a hand-over";
    },
    how: "Of the cases that should be handed over, those it handed over (an engine failure counts as getting it wrong)."
  },
  {
    key: "answer_check_rate", label: "Answer checks",
    value: function (s) {
      return s.answer_checks ? pct(s.answer_check_rate) + " · " + s.answer_checks_passed + " of " + plural(s.answer_checks, "check", "checks") : "No checks applied";
    },
    how: "The must-say, must-never-say and must-cite checks that held, of those applied (must-say and cites only where the version answered)."
  },
  {
    key: "confidence_auroc", label: "Confidence AUROC",
    value: function (s) {
      return isNum(s.confidence_auroc) ? s.confidence_auroc.toFixed(2) + " over " + plural(s.calibration_cases, "reply", "replies") : "Not measurable";
    },
    how: "Over the replies the model gave with a confidence (declines and engine failures left out): the chance that a good answer (the case wants an answer and the model's text passes its answer checks, whatever the policy then did with it) has a higher confidence than a reply that is not (ties count half). 1.00 separates them perfectly, 0.50 is chance; it needs both kinds."
  },
  {
    key: "expected_calibration_error", label: "Calibration error",
    value: function (s) { return two(s.expected_calibration_error); },
    how: "The same replies in five bins of stated confidence (table below): the gap between a bin's mean confidence and its share of good answers, averaged with the bins' counts as weights. 0 is perfectly calibrated."
  },
  {
    key: "engine_errors", label: "Engine errors",
    value: function (s) { return String(s.engine_errors); },
    how: "Cases whose generation failed or timed out; each is also a failed case."
  },
  {
    key: "threshold", label: "Hand-over threshold",
    value: function (s) { return two(s.threshold); },
    how: "The version's own confidence_threshold: an answer below it is handed over."
  },
  {
    key: "tokens", label: "Tokens",
    value: function (s) { return String(s.tokens); },
    how: "Prompt and completion tokens of every case together."
  },
  {
    key: "latency_s_median", label: "Median latency",
    value: function (s) { return isNum(s.latency_s_median) ? duration(s.latency_s_median) : "—"; },
    how: "The middle case's time from its screenshots being read to the decision, waiting for the engine included."
  }
];

function pct(v) {
  return isNum(v) ? Math.round(v * 100) + "%" : "—";
}

function two(v) {
  return isNum(v) ? v.toFixed(2) : "—";
}

function plural(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

function when(iso) {
  const d = parseTime(iso);
  if (!d) return str(iso);
  try {
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  } catch (_) {
    return d.toLocaleString();
  }
}

function expectation(c) {
  if (c.expect === "handover") return "Hand over" + (c.reason ? " · " + reasonLabel(c.reason) : "");
  return c.expect === "answer" ? "Answer" : str(c.expect) || "—";
}

function outcome(r) {
  return r.outcome === "handover" ? "Hand over" + (r.reason ? " · " + reasonLabel(r.reason) : "") : "Answer";
}

/** A run's stored totals (runs list): the JSON text as an object, or null. */
function storedSummary(text) {
  if (!text) return null;
  try {
    const parsed = JSON.parse(text);
    return parsed && typeof parsed === "object" ? parsed : null;
  } catch (_) {
    return null;
  }
}

// -----------------------------------------------------------------------------------------
// The reply diff: words (a CJK character is a word), longest common subsequence
// -----------------------------------------------------------------------------------------
function words(text) {
  return str(text).match(/[\u2E80-\u9FFF\uF900-\uFAFF\uFF00-\uFFEF]|[^\s\u2E80-\u9FFF\uF900-\uFAFF\uFF00-\uFFEF]+|\s+/g) || [];
}

/** [{op: "same"|"del"|"ins", text}] turning `before` into `after`, runs of one kind joined. */
function wordDiff(before, after) {
  const a = words(before);
  const b = words(after);
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const x = a.slice(head, a.length - tail);
  const y = b.slice(head, b.length - tail);
  const parts = [];
  const push = function (op, text) {
    if (!text) return;
    const last = parts[parts.length - 1];
    if (last && last.op === op) last.text += text;
    else parts.push({ op: op, text: text });
  };
  push("same", a.slice(0, head).join(""));
  if ((x.length + 1) * (y.length + 1) > MAX_DIFF_CELLS) {
    push("del", x.join(""));
    push("ins", y.join(""));
  } else {
    // lcs[i][j]: the longest common run of x[i..] and y[j..], in one flat table
    const width = y.length + 1;
    const lcs = new Uint32Array((x.length + 1) * width);
    for (let i = x.length - 1; i >= 0; i--) {
      for (let j = y.length - 1; j >= 0; j--) {
        lcs[i * width + j] = x[i] === y[j] ? lcs[(i + 1) * width + j + 1] + 1
          : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < x.length || j < y.length) {
      if (i < x.length && j < y.length && x[i] === y[j]) {
        push("same", x[i++]);
        j++;
      } else if (j < y.length && (i === x.length || lcs[i * width + j + 1] >= lcs[(i + 1) * width + j])) {
        push("ins", y[j++]);
      } else {
        push("del", x[i++]);
      }
    }
  }
  push("same", a.slice(a.length - tail).join(""));
  return parts;
}

function diffView(live, draft) {
  const box = el("p", { class: "rg-diff", "data-testid": "rg-diff" });
  for (const part of wordDiff(live, draft)) {
    if (part.op === "same") box.appendChild(document.createTextNode(part.text));
    else box.appendChild(el(part.op, { text: part.text }));
  }
  return box;
}

// -----------------------------------------------------------------------------------------
// The card
// -----------------------------------------------------------------------------------------
/**
 * regressionCard(api, hooks) -> {open(name), draftChanged(), publish(path, yaml), publishSummary(path, yaml)}.
 * hooks: draft() the editor's text; replaceDraft(text) puts a changed draft in the editor as an
 * edit; issues(text, issues) shows a draft's problems.
 */
export function regressionCard(api, hooks) {
  const state = {
    name: null, // the template open in the editor
    seq: 0, // bumped when another template opens: answers for the old one are dropped
    cases: [],
    runs: [],
    runId: null, // the run shown
    view: null, // GET /operator/api/runs/{id} of the run shown
    pollTimer: 0,
    filter: "all",
    ran: new Map(), // run id -> the draft text it answers (runs started from this page)
    opened: new Set(), // keys of the cases whose replies are unfolded (kept while the run is polled)
    starting: false
  };

  function templatePath(rest) {
    return "/operator/api/templates/" + encodeURIComponent(state.name) + rest;
  }

  // The set -----------------------------------------------------------------------------------
  async function loadCases() {
    const seq = state.seq;
    setStatus($("rg-set-status"), "Loading…", "busy");
    try {
      const data = await api(templatePath("/cases"));
      if (seq !== state.seq) return;
      state.cases = Array.isArray(data.cases) ? data.cases : [];
      setStatus($("rg-set-status"), "");
    } catch (e) {
      if (seq !== state.seq) return;
      state.cases = [];
      setStatus($("rg-set-status"), "The set could not be read: " + e.message, "bad");
    }
    renderCases();
  }

  function thumbs(c) {
    const n = isNum(c.screenshots) ? c.screenshots : 0;
    if (!n) return null;
    if (c.source !== "operator" || !isNum(c.id)) {
      return el("span", { class: "rg-shots", text: plural(n, "screenshot", "screenshots") });
    }
    const list = el("span", { class: "rg-thumbs" });
    for (let i = 1; i <= n; i++) {
      list.appendChild(el("img", {
        src: "/operator/api/cases/" + c.id + "/screenshots/" + i, alt: "Screenshot " + i + " of case " + str(c.label),
        loading: "lazy", "data-testid": "rg-thumb"
      }));
    }
    return list;
  }

  function checksText(c) {
    const parts = [];
    if (Array.isArray(c.must_contain) && c.must_contain.length) parts.push("says " + c.must_contain.map(quote).join(", "));
    if (Array.isArray(c.must_not_contain) && c.must_not_contain.length) parts.push("never says " + c.must_not_contain.map(quote).join(", "));
    if (Array.isArray(c.cite) && c.cite.length) parts.push("cites " + c.cite.map(quote).join(", "));
    return parts.join(" · ");
  }

  function quote(s) {
    return "“" + str(s) + "”";
  }

  function caseSummary(c) {
    const box = el("div", { class: "rg-case" }, [
      el("span", { class: "rg-case-label", text: c.source === "operator" ? "Own " + str(c.label) : str(c.label) }),
      el("span", { class: "rg-case-text", text: str(c.text) || "(a screenshot without text)" })
    ]);
    const meta = [str(c.language).toUpperCase(), channelLabel(c.channel)];
    if (c.created_by) meta.push("added by " + str(c.created_by));
    box.appendChild(el("span", { class: "rg-case-meta", text: meta.join(" · ") }));
    const shots = thumbs(c);
    if (shots) box.appendChild(shots);
    return box;
  }

  function renderCases() {
    const list = $("rg-cases");
    clear(list);
    const own = state.cases.filter(function (c) { return c.source === "operator"; }).length;
    const shipped = state.cases.length - own;
    setText($("rg-set-count"), state.cases.length
      ? plural(state.cases.length, "case", "cases") + ": " + shipped + " shipped, " + own + " of your team's"
      : "No cases yet");
    for (const c of state.cases) {
      const item = el("li", { class: "rg-set-item", "data-testid": "rg-set-case", "data-key": str(c.key) }, [
        caseSummary(c),
        el("span", { class: "rg-expect" }, [
          el("strong", { text: expectation(c) }),
          checksText(c) ? el("span", { class: "rg-checks", text: checksText(c) }) : null
        ])
      ]);
      if (c.source === "operator" && isNum(c.id)) {
        const remove = el("button", {
          type: "button", class: "btn btn-ghost btn-sm op-danger", "data-testid": "rg-remove-case",
          "aria-label": "Remove case " + str(c.label) + " from the set", text: "Remove"
        });
        remove.addEventListener("click", function () {
          removeCase(c, remove);
        });
        item.appendChild(remove);
      }
      list.appendChild(item);
    }
    $("rg-set-empty").hidden = state.cases.length > 0;
  }

  async function removeCase(c, button) {
    if (!window.confirm("Remove case " + str(c.label) + " from the regression set of “" + state.name + "”? Runs made before keep their results.")) return;
    setBusy(button, true);
    try {
      await api("/operator/api/cases/" + c.id, { method: "DELETE" });
      toast("Case " + str(c.label) + " removed from the set.");
    } catch (e) {
      showError("The case was not removed: " + e.message);
      setBusy(button, false);
      return;
    }
    await loadCases();
  }

  // Runs ----------------------------------------------------------------------------------------
  async function loadRuns(followRunning) {
    const seq = state.seq;
    try {
      const data = await api(templatePath("/runs"));
      if (seq !== state.seq) return;
      state.runs = Array.isArray(data.runs) ? data.runs : [];
    } catch (e) {
      if (seq !== state.seq) return;
      setStatus($("rg-status"), "The recent runs could not be loaded: " + e.message, "bad");
    }
    renderRuns();
    const going = state.runs.find(function (r) { return r.status === "running"; });
    if (followRunning && going && state.runId === null) openRun(going.id);
  }

  function renderRuns() {
    const list = $("rg-runs");
    clear(list);
    $("rg-runs-wrap").hidden = state.runs.length === 0;
    for (const r of state.runs.slice(0, 8)) {
      const figures = storedSummary(r.summary);
      const line = ["Run " + r.id, STATUS[r.status] || str(r.status), r.done + " of " + r.total + " answers",
        "by " + str(r.started_by), when(r.started_at)];
      if (figures && figures.draft && figures.live) {
        line.push("pass rate " + pct(figures.draft.pass_rate) + " draft, " + pct(figures.live.pass_rate) + " live");
      }
      const open = el("button", {
        type: "button", class: "btn btn-ghost btn-sm", "data-testid": "rg-open-run", "data-run": String(r.id),
        "aria-label": "Open run " + r.id, text: "Open"
      });
      open.addEventListener("click", function () {
        openRun(r.id);
        $("rg-result-heading").focus();
      });
      const item = el("li", { class: "rg-run-item", "data-testid": "rg-run-item", "data-run": String(r.id), "data-status": str(r.status) }, [
        el("span", { text: line.join(" · ") }), open
      ]);
      if (r.id === state.runId) item.setAttribute("aria-current", "true");
      list.appendChild(item);
    }
  }

  async function startRun() {
    if (!state.name || state.starting) return;
    const text = hooks.draft();
    const name = state.name;
    state.starting = true;
    setBusy($("rg-run"), true);
    setStatus($("rg-status"), "Starting…", "busy");
    try {
      const data = await api(templatePath("/runs"), { method: "POST", json: { yaml: text } });
      if (name !== state.name) return;
      state.ran.set(data.run_id, text);
      clearError();
      setStatus($("rg-status"), "");
      openRun(data.run_id);
      loadRuns(false);
    } catch (e) {
      setStatus($("rg-status"), "Not started", "bad");
      if (e.issues) hooks.issues(text, e.issues);
      showError("The regression set did not run: " + e.message);
    } finally {
      state.starting = false;
      setBusy($("rg-run"), false);
    }
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = 0;
  }

  function openRun(id) {
    stopPolling();
    state.runId = id;
    state.view = null;
    state.filter = "all";
    state.opened.clear();
    renderRuns();
    poll();
  }

  async function poll() {
    const id = state.runId;
    const seq = state.seq;
    let data;
    try {
      data = await api("/operator/api/runs/" + id);
    } catch (e) {
      if (id !== state.runId || seq !== state.seq) return;
      setStatus($("rg-status"), "Run " + id + " could not be read: " + e.message, "bad");
      if (e.status !== 404) state.pollTimer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    if (id !== state.runId || seq !== state.seq) return;
    const was = state.view && state.view.run ? state.view.run.status : null;
    state.view = data;
    renderRun();
    const status = data.run ? data.run.status : "";
    if (status === "running") {
      state.pollTimer = setTimeout(poll, POLL_MS);
    } else if (was === "running") {
      loadRuns(false);
      if (status === "done") toast("Run " + id + " finished.");
    }
  }

  async function cancelRun() {
    const id = state.runId;
    if (id === null) return;
    const button = $("rg-cancel");
    setBusy(button, true);
    try {
      await api("/operator/api/runs/" + id + "/cancel", { method: "POST" });
      toast("Run " + id + " cancelled; the cases it decided are kept.");
    } catch (e) {
      if (e.status !== 409) showError("The run was not cancelled: " + e.message);
    } finally {
      setBusy(button, false);
    }
    if (id === state.runId) {
      stopPolling();
      await poll();
      loadRuns(false);
    }
  }

  // One run ------------------------------------------------------------------------------------
  function renderRun() {
    const view = state.view;
    const result = $("rg-result");
    if (!view || !view.run) {
      result.hidden = true;
      return;
    }
    const run = view.run;
    const going = run.status === "running";
    result.hidden = false;
    result.setAttribute("data-status", str(run.status));
    result.setAttribute("aria-busy", going ? "true" : "false");
    setText($("rg-result-heading"), "Run " + run.id + " · draft against live version " + (isNum(run.live_version) ? run.live_version : "—"));
    const meta = [STATUS[run.status] || str(run.status), "started by " + str(run.started_by) + " " + when(run.started_at)];
    if (run.finished_at) meta.push("ended " + when(run.finished_at));
    setText($("rg-result-meta"), meta.join(" · "));
    const error = $("rg-run-error");
    error.hidden = !run.error;
    setText(error, run.error ? "The run stopped: " + str(run.error) : "");

    const progress = $("rg-progress");
    progress.hidden = !going;
    progress.setAttribute("data-done", String(run.done));
    progress.setAttribute("data-total", String(run.total));
    const bar = $("rg-progress-bar");
    bar.max = Math.max(1, run.total || 0);
    bar.value = run.done || 0;
    setText($("rg-progress-text"), run.done + " of " + run.total + " answers decided (each case with the draft and with the live version)");
    $("rg-cancel").hidden = !going;
    draftChanged();
    renderChanges(view.changes || {});
    renderFilters();
    renderRows();
    renderTotals(view.summary || {}, going);
  }

  function renderChanges(changes) {
    const box = $("rg-changes");
    clear(box);
    for (const key of Object.keys(CHANGES)) {
      const n = isNum(changes[key]) ? changes[key] : 0;
      if (key === "incomplete" && !n) continue;
      box.appendChild(el("span", {
        class: "rg-change rg-change-" + key, "data-testid": "rg-change-count", "data-change": key,
        title: CHANGES[key].how, text: CHANGES[key].label + " " + n
      }));
    }
  }

  function renderFilters() {
    const cases = state.view && Array.isArray(state.view.cases) ? state.view.cases : [];
    for (const key of Object.keys(FILTERS)) {
      const button = $("rg-filter-" + key);
      const n = cases.filter(FILTERS[key]).length;
      setText(button, { all: "All", changed: "Changed", failing: "Failing with the draft" }[key] + " (" + n + ")");
      button.setAttribute("aria-pressed", state.filter === key ? "true" : "false");
    }
  }

  function armCell(result, arm, going) {
    const cell = el("td", { class: "rg-arm", "data-testid": "rg-arm", "data-arm": arm });
    if (!result) {
      cell.setAttribute("data-passed", "");
      cell.appendChild(el("span", { class: "muted", text: going ? "Waiting…" : "Not decided" }));
      return cell;
    }
    const passed = result.passed === true;
    cell.setAttribute("data-passed", passed ? "true" : "false");
    cell.appendChild(el("div", { class: "rg-verdict" }, [
      el("span", { class: passed ? "op-pass" : "op-fail", text: passed ? "Pass" : "Fail" }),
      el("span", { class: result.outcome === "handover" ? "op-out-handover" : "op-out-answer", text: outcome(result) })
    ]));
    const facts = [];
    facts.push(el("span", { class: confidenceClass(result.confidence), title: "Confidence", text: pct(result.confidence) }));
    const tokens = (result.prompt_tokens || 0) + (result.completion_tokens || 0);
    facts.push(el("span", {
      text: result.model_called ? tokens + " tokens" : "no model call",
      title: result.model_called ? result.prompt_tokens + " prompt + " + result.completion_tokens + " completion" : "Decided before the model"
    }));
    if (isNum(result.latency_s)) facts.push(el("span", { title: "Latency", text: duration(result.latency_s) }));
    cell.appendChild(el("div", { class: "rg-facts" }, facts));
    const failures = Array.isArray(result.failures) ? result.failures : [];
    if (failures.length) {
      const list = el("ul", { class: "rg-failures", "data-testid": "rg-failures" });
      for (const f of failures) list.appendChild(el("li", { text: str(f) }));
      cell.appendChild(list);
    }
    return cell;
  }

  function replies(c) {
    const live = c.live ? str(c.live.reply) : "";
    const draft = c.draft ? str(c.draft.reply) : "";
    if (!live && !draft) return null;
    const details = el("details", { class: "rg-replies", "data-testid": "rg-replies", open: state.opened.has(c.key) }, [
      el("summary", { text: live === draft ? "Reply (the same for both)" : "Replies: what changed from live to the draft" })
    ]);
    details.addEventListener("toggle", function () {
      if (details.open) state.opened.add(c.key);
      else state.opened.delete(c.key);
    });
    if (c.live && c.draft && live !== draft) {
      details.appendChild(el("p", { class: "rg-diff-legend" }, [
        el("del", { text: "live only" }), document.createTextNode(" "), el("ins", { text: "draft only" })
      ]));
      details.appendChild(diffView(live, draft));
    }
    const both = el("div", { class: "rg-reply-pair" });
    for (const [label, text, arm] of [["Draft", draft, "draft"], ["Live", live, "live"]]) {
      both.appendChild(el("div", { class: "rg-reply" }, [
        el("span", { class: "op-label", text: label }),
        el("div", { class: "rg-reply-text", "data-testid": "rg-reply", "data-arm": arm, text: text || "(no reply)" })
      ]));
    }
    details.appendChild(both);
    return details;
  }

  function renderRows() {
    const body = $("rg-rows");
    clear(body);
    const view = state.view;
    const going = view.run.status === "running";
    const cases = Array.isArray(view.cases) ? view.cases : [];
    const shown = cases.filter(FILTERS[state.filter]);
    for (const c of shown) {
      const info = c.case || {};
      const change = CHANGES[c.change] || { label: str(c.change), how: "" };
      const caseCell = el("td", { class: "rg-case-cell" }, [info.removed ? el("span", { class: "rg-case-text", text: str(c.key) + " (removed from the set)" }) : caseSummary(info)]);
      const more = replies(c);
      if (more) caseCell.appendChild(more);
      body.appendChild(el("tr", {
        class: "rg-row", "data-testid": "rg-case-row", "data-key": str(c.key), "data-change": str(c.change),
        "data-draft-passed": c.draft ? String(c.draft.passed === true) : "", "data-live-passed": c.live ? String(c.live.passed === true) : ""
      }, [
        caseCell,
        el("td", null, [el("span", { class: "rg-expect" }, [el("strong", { text: info.removed ? "—" : expectation(info) }),
          checksText(info) ? el("span", { class: "rg-checks", text: checksText(info) }) : null])]),
        armCell(c.draft, "draft", going),
        armCell(c.live, "live", going),
        el("td", null, [el("span", { class: "rg-change rg-change-" + str(c.change), title: change.how, text: change.label })])
      ]));
    }
    if (!shown.length) {
      const empty = cases.length ? "No case matches this filter." : going ? "No case decided yet." : "This run decided no case.";
      body.appendChild(el("tr", null, [el("td", { colspan: "5", class: "muted", text: empty })]));
    }
  }

  // Totals, calibration, threshold advice -------------------------------------------------------
  /** The figures of both versions; `compact` (the publish dialog): the quality figures, how each is counted as a tooltip. */
  function totalsTable(summary, testid, compact) {
    const table = el("table", { class: "op-table rg-totals", "data-testid": testid });
    table.appendChild(el("thead", null, [el("tr", null, [
      el("th", { scope: "col", text: "Figure" }), el("th", { scope: "col", text: "Draft" }),
      el("th", { scope: "col", text: "Live" }), compact ? null : el("th", { scope: "col", text: "How it is counted" })
    ])]));
    const body = el("tbody");
    for (const f of compact ? FIGURES.slice(0, 7) : FIGURES) {
      body.appendChild(el("tr", { "data-testid": "rg-figure", "data-figure": f.key }, [
        el("th", { scope: "row", text: f.label, title: compact ? f.how : null }),
        el("td", { "data-arm": "draft", text: summary.draft ? f.value(summary.draft) : "—" }),
        el("td", { "data-arm": "live", text: summary.live ? f.value(summary.live) : "—" }),
        compact ? null : el("td", { class: "rg-how", text: f.how })
      ]));
    }
    table.appendChild(body);
    return table;
  }

  function reliabilityTable(summary) {
    const draft = Array.isArray(summary.draft.reliability) ? summary.draft.reliability : [];
    const live = Array.isArray(summary.live.reliability) ? summary.live.reliability : [];
    const table = el("table", { class: "op-table rg-reliability", "data-testid": "rg-reliability" });
    table.appendChild(el("caption", { text: "Reliability: stated confidence against the share of good answers, per bin (replies with a confidence only)" }));
    table.appendChild(el("thead", null, [el("tr", null, [
      el("th", { scope: "col", text: "Confidence" }),
      el("th", { scope: "col", text: "Draft: replies" }), el("th", { scope: "col", text: "mean conf." }), el("th", { scope: "col", text: "good" }),
      el("th", { scope: "col", text: "Live: replies" }), el("th", { scope: "col", text: "mean conf." }), el("th", { scope: "col", text: "good" })
    ])]));
    const body = el("tbody");
    const bins = Math.max(draft.length, live.length);
    for (let i = 0; i < bins; i++) {
      const first = draft[i] || live[i] || {};
      const range = isNum(first.low) && isNum(first.high) ? first.low.toFixed(1) + "–" + first.high.toFixed(1) : "";
      const cells = [el("th", { scope: "row", text: range })];
      for (const b of [draft[i], live[i]]) {
        const bin = b || {};
        cells.push(el("td", { text: isNum(bin.count) ? String(bin.count) : "0" }));
        cells.push(el("td", { text: two(bin.mean_confidence) }));
        cells.push(el("td", { text: pct(bin.pass_rate) }));
      }
      body.appendChild(el("tr", { "data-testid": "rg-bin" }, cells));
    }
    table.appendChild(body);
    return table;
  }

  function renderTotals(summary, going) {
    const box = $("rg-totals");
    clear(box);
    const advice = $("rg-advice");
    clear(advice);
    advice.hidden = true;
    if (!summary.draft || !summary.live) {
      box.appendChild(el("p", { class: "muted small", text: going ? "The totals appear when every case is decided." : "This run ended before every case was decided: it has no totals." }));
      return;
    }
    box.appendChild(totalsTable(summary, "rg-totals-table"));
    box.appendChild(reliabilityTable(summary));
    renderAdvice(summary.draft);
  }

  function renderAdvice(draft) {
    const box = $("rg-advice");
    box.hidden = false;
    const a = draft.threshold_advice;
    if (!a || !isNum(a.threshold)) {
      box.appendChild(el("p", {
        "data-testid": "rg-advice-text",
        text: draft.calibration_cases ? "No confidence threshold reaches the target precision on this run's replies: the draft needs better answers, not another threshold."
          : "The draft gave no replies with a confidence in this run, so there is no threshold to advise."
      }));
      return;
    }
    const threshold = Math.round(a.threshold * 100) / 100;
    const text = "Hand over below " + threshold.toFixed(2) + " to reach " + Math.round(a.target_precision * 100) + "% precision (keeps " + a.kept + " of " + a.of + " answers)";
    box.appendChild(el("p", { "data-testid": "rg-advice-text" }, [el("strong", { text: text }),
      document.createTextNode(isNum(draft.threshold) ? ". The draft's threshold is " + draft.threshold.toFixed(2) + "." : ".")]));
    box.appendChild(el("p", { class: "muted small", text: "The lowest threshold at which the answers kept (confidence at or above it) would pass at the target precision; the others would be handed over. Measured on this run's cases only." }));
    if (isNum(draft.threshold) && Math.abs(draft.threshold - threshold) < 0.005) return;
    const apply = el("button", { type: "button", class: "btn btn-secondary btn-sm", "data-testid": "rg-apply-threshold", text: "Apply " + threshold.toFixed(2) + " to the draft" });
    apply.addEventListener("click", function () {
      applyThreshold(threshold, apply);
    });
    box.appendChild(apply);
  }

  async function applyThreshold(threshold, button) {
    setBusy(button, true);
    const text = hooks.draft();
    try {
      const data = await api("/operator/api/draft/threshold", { method: "POST", json: { yaml: text, threshold: threshold } });
      if (typeof data.yaml === "string" && hooks.draft() === text) {
        hooks.replaceDraft(data.yaml);
        toast("The draft's confidence threshold is now " + threshold.toFixed(2) + ". Run the set again to check it, then publish.");
      } else {
        showError("The draft changed meanwhile: apply the threshold again.");
      }
    } catch (e) {
      if (e.issues) hooks.issues(text, e.issues);
      showError("The threshold was not applied: " + e.message);
    } finally {
      setBusy(button, false);
    }
  }

  /** Whether the run shown answered the draft as it is now (known for runs started here). */
  function draftChanged() {
    const note = $("rg-stale");
    const text = state.runId !== null && state.ran.has(state.runId) ? state.ran.get(state.runId) : null;
    note.hidden = text === null || text === hooks.draft();
  }

  // Publishing through the gate -----------------------------------------------------------------
  /** POST publish; a refusal carries the gate's check (the run's comparison) in its detail. */
  async function postPublish(path, yaml, confirm) {
    try {
      return await api(path, { method: "POST", json: { yaml: yaml, confirm: confirm } });
    } catch (err) {
      const check = err.detail && err.detail.check;
      err.check = check && typeof check === "object" ? check : null;
      throw err;
    }
  }

  function gateDialog(err) {
    const dialog = $("publish-gate");
    const check = err.check || {};
    const comparison = check.comparison || {};
    const summary = check.summary || {};
    const worse = err.code === "confirm_worse" || err.code === "worse_than_live";
    setText($("publish-gate-title"), worse ? "The draft does worse than the live version" : "Run the regression set first");
    setText($("publish-gate-message"), err.message);
    const why = $("publish-gate-why");
    clear(why);
    for (const line of Array.isArray(comparison.why) ? comparison.why : []) why.appendChild(el("li", { text: str(line) }));
    why.hidden = !why.firstChild;
    const figures = $("publish-gate-figures");
    clear(figures);
    if (summary.draft && summary.live) {
      figures.appendChild(el("p", { class: "muted small", text: "Run " + str(check.run_id) + " of this draft:" }));
      figures.appendChild(totalsTable(summary, "publish-gate-totals", true));
    }
    $("publish-anyway").hidden = err.code !== "confirm_worse";
    $("publish-gate-run").hidden = err.code === "confirm_worse";
    dialog.returnValue = "";
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function () {
        resolve(dialog.returnValue);
      }, { once: true });
      dialog.showModal();
      (err.code === "confirm_worse" ? $("publish-gate-keep") : $("publish-gate-run")).focus();
    });
  }

  /**
   * Publish `yaml` at `path` through the regression gate: when the server asks, the comparison
   * is shown and "Publish anyway" sends it again with confirm. The server's answer, or null when
   * the operator kept the draft (or went to run the set); other refusals throw.
   */
  /** One sentence for the publish confirmation: the newest run of exactly this draft against live. */
  async function publishSummary(path, yaml) {
    let data;
    try {
      data = await api(path, { method: "POST", json: { yaml: yaml } });
    } catch (_) {
      return ""; // the publish itself reports what is wrong
    }
    const check = (data && data.check) || {};
    const figures = check.summary || {};
    if (!isNum(check.run_id) || !figures.draft || !figures.live) {
      return "No finished regression run of this draft against the live version yet.";
    }
    const parts = [];
    for (const [key, name] of [["pass_rate", "pass rate"], ["handover_recall", "hand-over recall"],
      ["handover_precision", "hand-over precision"], ["answer_check_rate", "answer checks"]]) {
      const d = figures.draft[key];
      const l = figures.live[key];
      if (isNum(d) || isNum(l)) parts.push(name + " " + pct(d) + " (live " + pct(l) + ")");
    }
    const worse = check.comparison && check.comparison.worse;
    return "Regression run " + check.run_id + " of this draft: " + parts.join(", ") + "." +
      (worse ? " It does worse than the live version." : "");
  }

  async function publish(path, yaml) {
    try {
      return await postPublish(path, yaml, false);
    } catch (e) {
      if (GATE.indexOf(e.code) === -1) throw e;
      const choice = await gateDialog(e);
      if (choice === "publish") return await postPublish(path, yaml, true);
      if (choice === "run") {
        $("regression").scrollIntoView({ block: "start" });
        startRun();
      }
      return null;
    }
  }

  // Wiring ---------------------------------------------------------------------------------------
  $("rg-run").addEventListener("click", startRun);
  $("rg-cancel").addEventListener("click", cancelRun);
  $("rg-reload").addEventListener("click", function () {
    loadCases();
    loadRuns(false);
  });
  for (const key of Object.keys(FILTERS)) {
    $("rg-filter-" + key).addEventListener("click", function () {
      state.filter = key;
      renderFilters();
      renderRows();
    });
  }

  return {
    /** A template was opened in the editor: its set and recent runs (a run still going is followed). */
    open: function (name) {
      stopPolling();
      state.seq++;
      state.name = name;
      state.cases = [];
      state.runs = [];
      state.runId = null;
      state.view = null;
      setStatus($("rg-status"), "");
      renderCases();
      renderRuns();
      renderRun();
      loadCases();
      loadRuns(true);
    },
    draftChanged: draftChanged,
    publish: publish,
    publishSummary: publishSummary
  };
}

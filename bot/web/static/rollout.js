/*
 * The operator console's Rollout view: give a template version (a stored one, or the draft open
 * in the editor) to a share of a channel's new conversations, watch it beside the live version,
 * then promote it to everyone or roll it back.
 *
 * Both arms are shown side by side with the same figures, counted from the rollout's start: the
 * conversations in each arm started in the same period on the same channel, so the difference
 * is the version. Promote and Roll back ask first; if someone else ended the rollout meanwhile
 * the server answers 409 and the view reloads to show what happened.
 *
 * An ES module imported by operator.js, which owns navigation, the API client and the editor.
 * Everything from the server is inserted as text nodes only.
 */
import {
  $, el, setText, reasonLabel, channelLabel, isNum, parseTime, showError, clearError, toast, clear, setStatus, setBusy
} from "./console-common.js";
import { duration } from "./stats.js";

const API = "/operator/api/rollouts";
const DRAFT = "draft"; // the version select's value for the editor's draft
const ARMS = ["candidate", "live"];
const OUTCOME_WORDS = { promoted: "Promoted", rolled_back: "Rolled back" };

function pct(v) {
  return isNum(v) ? Math.round(v * 100) + "%" : "—";
}

function percentLabel(v) {
  return isNum(v) ? (Math.round(v * 10) / 10) + "%" : "—";
}

function num(v) {
  return isNum(v) ? v : 0;
}

function when(iso) {
  const d = parseTime(iso);
  return d ? d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "";
}

function versionLabel(template, version) {
  return template + " v" + version;
}

/** The figures of both arms, one row each, as [label, key, (arm figures) -> text]. */
const FIGURES = [
  ["Conversations", "conversations", function (a) { return String(num(a.conversations)); }],
  ["User messages", "messages", function (a) { return String(num(a.messages)); }],
  ["Answered by the bot", "answered", function (a) { return pct(a.answered_rate); }],
  ["Handed over", "handed-over", function (a) { return pct(a.handover_rate); }],
  ["Hand-overs by reason", "reasons", function (a) {
    const reasons = a.handovers_by_reason || {};
    const keys = Object.keys(reasons);
    return keys.length ? keys.map(function (k) { return reasonLabel(k) + " " + num(reasons[k]); }).join(" · ") : "None";
  }],
  ["Mean confidence", "confidence", function (a) { return isNum(a.mean_confidence) ? a.mean_confidence.toFixed(2) : "—"; }],
  ["Thumbs up / down", "thumbs", function (a) {
    const f = a.feedback || {};
    return num(f.helpful) + " / " + num(f.not_helpful);
  }],
  ["Reply time (median)", "reply-time", function (a) { return duration((a.reply_time_s || {}).median); }]
];

/**
 * `options.draft()` gives the editor's {name, yaml} (or null when no template is open);
 * `options.published()` is told when a promote made a new version live.
 */
export function rolloutView(api, options) {
  const state = { seq: 0, rollouts: [], templates: [], channels: [], versions: [], prefill: null,
                  versionsSeq: 0, starting: false };

  /** Rollouts, templates and channels from the server, then the view drawn from them (the latest call wins). */
  async function load() {
    const seq = ++state.seq;
    const view = $("view-rollout");
    setStatus($("rollout-status"), "Loading…", "busy");
    view.setAttribute("aria-busy", "true");
    let found = null;
    let failure = null;
    try {
      found = await Promise.all([api(API), api("/operator/api/templates")]);
    } catch (e) {
      failure = e;
    }
    if (seq !== state.seq) return;
    view.setAttribute("aria-busy", "false");
    if (failure) {
      setStatus($("rollout-status"), "Not loaded", "bad");
      showError("Rollouts could not be loaded: " + failure.message);
      return;
    }
    state.rollouts = Array.isArray(found[0].rollouts) ? found[0].rollouts : [];
    state.templates = Array.isArray(found[1].templates) ? found[1].templates : [];
    state.channels = Array.isArray(found[1].channels) ? found[1].channels : [];
    renderRollouts();
    setStatus($("rollout-status"), "Updated " + new Date().toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }));
    await renderForm();
  }

  // The start form ------------------------------------------------------------------------
  function activeOn(channel) {
    return state.rollouts.find(function (r) { return r.status === "active" && r.channel === channel; }) || null;
  }

  async function renderForm() {
    const select = $("rollout-template");
    const draft = options.draft();
    const used = state.channels.length ? state.channels[0].template : "";
    const wanted = state.prefill || select.value || (draft && draft.name) || used;
    clear(select);
    for (const t of state.templates) {
      select.appendChild(el("option", { value: t.name, text: t.name }));
    }
    if (state.templates.some(function (t) { return t.name === wanted; })) select.value = wanted;
    await templateChosen();
  }

  async function templateChosen() {
    const name = $("rollout-template").value;
    const seq = ++state.versionsSeq;
    renderChannels(name);
    let versions = [];
    if (name) {
      try {
        versions = (await api("/operator/api/templates/" + encodeURIComponent(name) + "/versions")).versions || [];
      } catch (e) {
        showError("The versions of " + name + " could not be loaded: " + e.message);
      }
    }
    if (seq !== state.versionsSeq) return;
    state.versions = versions;
    renderVersions(name);
    if (state.prefill === name) {
      state.prefill = null;
      if ($("rollout-version").querySelector('option[value="' + DRAFT + '"]')) $("rollout-version").value = DRAFT;
      $("rollout-percent").focus();
    }
  }

  function renderVersions(name) {
    const select = $("rollout-version");
    const previous = select.value;
    clear(select);
    const draft = options.draft();
    if (draft && draft.name === name) {
      select.appendChild(el("option", { value: DRAFT, text: "The draft in the editor (stored as a new version)" }));
    }
    for (const v of state.versions) {
      const published = v.published_at ? "published " + when(v.published_at) : "not published";
      select.appendChild(el("option", {
        value: String(v.version), disabled: !!v.live,
        text: "Version " + v.version + (v.live ? " (live)" : " (" + published + ")")
      }));
    }
    const choosable = Array.from(select.options).filter(function (o) { return !o.disabled; });
    if (choosable.some(function (o) { return o.value === previous; })) select.value = previous;
    else if (choosable.length) select.value = choosable[0].value;
    updateStart();
  }

  function renderChannels(name) {
    const select = $("rollout-channel");
    const previous = select.value;
    clear(select);
    const using = state.channels.filter(function (c) { return c.template === name; });
    for (const c of using) {
      const running = activeOn(c.channel);
      select.appendChild(el("option", {
        value: c.channel, disabled: !!running,
        text: channelLabel(c.channel) + (running ? " (rolling out " + versionLabel(running.template, running.version) + ")" : "")
      }));
    }
    const choosable = Array.from(select.options).filter(function (o) { return !o.disabled; });
    if (choosable.some(function (o) { return o.value === previous; })) select.value = previous;
    else if (choosable.length) select.value = choosable[0].value;
    setText($("rollout-channel-help"), !using.length
      ? "No channel answers with this template: choose it for a channel on the Templates page first."
      : choosable.length ? "Channels answering with this template."
        : "Every channel answering with this template has a rollout running: promote it or roll it back first.");
    updateStart();
  }

  function updateStart() {
    const ready = !state.starting && !!$("rollout-template").value && !!$("rollout-channel").value &&
      !!$("rollout-version").value && !$("rollout-channel").selectedOptions[0].disabled &&
      !$("rollout-version").selectedOptions[0].disabled;
    $("rollout-start").disabled = !ready;
  }

  async function start(event) {
    event.preventDefault();
    if ($("rollout-start").disabled) return;
    const template = $("rollout-template").value;
    const channel = $("rollout-channel").value;
    const percent = Number($("rollout-percent").value);
    if (!Number.isInteger(percent) || percent < 1 || percent > 99) {
      showError("Choose a share between 1 and 99 percent.");
      $("rollout-percent").focus();
      return;
    }
    const body = { template: template, channel: channel, percent: percent };
    const chosen = $("rollout-version").value;
    if (chosen === DRAFT) {
      const draft = options.draft();
      if (!draft || draft.name !== template) {
        showError("The editor no longer has a draft of " + template + ": open it on the Templates page, or choose a stored version.");
        return;
      }
      body.yaml = draft.yaml;
    } else {
      body.version = Number(chosen);
    }
    state.starting = true;
    setBusy($("rollout-start"), true);
    try {
      const rollout = await api(API, { method: "POST", json: body });
      clearError();
      toast("Rolling out " + versionLabel(rollout.template, rollout.version) + " to " + percentLabel(rollout.percent) +
        " of new conversations on " + channelLabel(rollout.channel) + ".");
    } catch (e) {
      showError("The rollout did not start: " + e.message);
    } finally {
      state.starting = false;
      setBusy($("rollout-start"), false);
    }
    await load();
  }

  // Rollouts --------------------------------------------------------------------------------
  function renderRollouts() {
    const active = state.rollouts.filter(function (r) { return r.status === "active"; });
    const ended = state.rollouts.filter(function (r) { return r.status !== "active"; });
    const box = $("rollout-active");
    clear(box);
    if (!active.length) {
      box.appendChild(el("section", { class: "op-card" }, [
        el("p", { class: "ro-empty", "data-testid": "rollout-none", text: "No rollout is running. Start one to give a version to a share of a channel's new conversations." })
      ]));
    }
    for (const r of active) box.appendChild(activeCard(r));
    const rows = $("rollout-ended");
    clear(rows);
    if (!ended.length) {
      rows.appendChild(el("tr", null, [el("td", { colspan: "7", class: "ro-empty", text: "None yet." })]));
    }
    for (const r of ended) rows.appendChild(endedRow(r));
  }

  function armsTable(r) {
    const arms = r.arms || {};
    const live = isNum(r.live_version) ? " (v" + r.live_version + ")" : "";
    const head = el("tr", null, [
      el("th", { scope: "col", text: "Since " + when(r.started_at) }),
      el("th", { scope: "col", text: "Candidate (v" + r.version + ", " + percentLabel(r.percent) + ")" }),
      el("th", { scope: "col", text: "Live" + live })
    ]);
    const body = el("tbody");
    for (const f of FIGURES) {
      body.appendChild(el("tr", { "data-figure": f[1] }, [el("th", { scope: "row", text: f[0] })].concat(ARMS.map(function (arm) {
        return el("td", { "data-arm": arm, text: f[2](arms[arm] || {}) });
      }))));
    }
    return el("div", { class: "op-table-wrap" }, [
      el("table", { class: "op-table ro-arms", "data-testid": "rollout-arms" }, [el("thead", null, [head]), body])
    ]);
  }

  function activeCard(r) {
    const title = "Rolling out " + versionLabel(r.template, r.version) + " on " + channelLabel(r.channel);
    const headingId = "rollout-" + r.id + "-title";
    const percentId = "rollout-" + r.id + "-percent";
    const input = el("input", { class: "op-input", id: percentId, type: "number", min: "1", max: "99", step: "1",
                                value: String(Math.round(num(r.percent))), "data-testid": "rollout-percent-input" });
    const save = el("button", { type: "button", class: "btn btn-secondary btn-sm", "data-testid": "rollout-save-percent", text: "Change share" });
    const back = el("button", { type: "button", class: "btn btn-secondary op-danger", "data-testid": "rollout-rollback", text: "Roll back" });
    const promote = el("button", { type: "button", class: "btn btn-primary", "data-testid": "rollout-promote", text: "Promote to everyone" });
    save.addEventListener("click", function () { changePercent(r, input, save); });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter") changePercent(r, input, save);
    });
    back.addEventListener("click", function () { end(r, "rollback", back); });
    promote.addEventListener("click", function () { end(r, "promote", promote); });
    return el("section", { class: "op-card", "data-testid": "rollout-card", "data-rollout-id": String(r.id),
                           "aria-labelledby": headingId }, [
      el("div", { class: "op-card-head" }, [el("h2", { id: headingId, text: title })]),
      el("p", { class: "op-hint", text: "Started by " + (r.started_by || "someone") + " on " + when(r.started_at) +
        ". " + percentLabel(r.percent) + " of the new conversations draw the candidate; each keeps what it drew." }),
      armsTable(r),
      el("div", { class: "ro-controls" }, [
        el("label", { for: percentId, class: "small", text: "Share of new conversations (%)" }), input, save,
        el("span", { class: "op-spacer" }), back, promote
      ])
    ]);
  }

  function endedRow(r) {
    const arms = r.arms || {};
    const c = arms.candidate || {};
    const l = arms.live || {};
    return el("tr", { "data-testid": "rollout-ended-row", "data-rollout-id": String(r.id), "data-status": r.status }, [
      el("td", { text: versionLabel(r.template, r.version) }),
      el("td", { text: channelLabel(r.channel) }),
      el("td", { text: percentLabel(r.percent) }),
      el("td", { text: (OUTCOME_WORDS[r.status] || r.status) + (r.ended_by ? " by " + r.ended_by : "") }),
      el("td", null, [el("time", { datetime: r.ended_at || "", text: when(r.ended_at) })]),
      el("td", { text: num(c.conversations) + " / " + num(l.conversations) }),
      el("td", { text: pct(c.answered_rate) + " / " + pct(l.answered_rate) })
    ]);
  }

  async function changePercent(r, input, button) {
    const percent = Number(input.value);
    if (!Number.isInteger(percent) || percent < 1 || percent > 99) {
      showError("Choose a share between 1 and 99 percent.");
      input.focus();
      return;
    }
    setBusy(button, true);
    try {
      await api(API + "/" + r.id + "/percent", { method: "POST", json: { percent: percent } });
      clearError();
      toast("New conversations on " + channelLabel(r.channel) + " now draw the candidate " + percent + "% of the time.");
    } catch (e) {
      showError("The share was not changed: " + e.message);
    } finally {
      setBusy(button, false);
    }
    await load();
  }

  async function end(r, action, button) {
    const label = versionLabel(r.template, r.version);
    const question = action === "promote"
      ? "Promote " + label + "? It is published and answers every conversation, old and new, on every channel using " + r.template + "."
      : "Roll back " + label + "? Every conversation on " + channelLabel(r.channel) + " goes back to the live version at once.";
    if (!window.confirm(question)) return;
    setBusy(button, true);
    try {
      await api(API + "/" + r.id + "/" + action, { method: "POST" });
      clearError();
      toast(action === "promote" ? label + " is live for everyone." : "Rolled back: " + channelLabel(r.channel) + " answers with the live version.");
      if (action === "promote") options.published();
    } catch (e) {
      showError((action === "promote" ? "Not promoted: " : "Not rolled back: ") + e.message);
    } finally {
      setBusy(button, false);
    }
    await load();
  }

  $("rollout-form").addEventListener("submit", start);
  $("rollout-template").addEventListener("change", templateChosen);
  $("rollout-channel").addEventListener("change", updateStart);
  $("rollout-version").addEventListener("change", updateStart);
  $("rollout-refresh").addEventListener("click", load);

  return {
    /** The view was opened (load) or left. */
    show: function (visible, focus) {
      if (!visible) return;
      load();
      if (focus) $("rollout-heading").focus();
    },
    /** "Roll out…" in the template editor: open this view with the editor's draft chosen. */
    rollOutDraft: function () {
      const draft = options.draft();
      if (!draft) return;
      state.prefill = draft.name;
      if (location.hash === "#/rollout") load();
      else location.hash = "#/rollout";
    }
  };
}

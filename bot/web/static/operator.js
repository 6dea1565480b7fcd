/*
 * Snapdesk operator console: edit, try, version and publish the support prompt templates (a
 * template's regression set and its runs are regression.js's card in the editor), choose which
 * template answers on each channel; the Knowledge view (knowledge.js) manages the
 * help centre the bot answers from, the Statistics view (stats.js) shows how the bot does. Admins also
 * get a Users view: list and add console accounts, change roles and display names, reset
 * passwords, sign accounts out everywhere, disable and enable them.
 *
 * Served at /operator with a strict CSP (script-src 'self'): no inline code, no eval. An ES module
 * that shares its helpers with the agent console through console-common.js.
 * Everything that comes from the server (template text, replies, issues, diff lines, names) is
 * inserted as text nodes only.
 */
import {
  $, el, setText, initials, reasonLabel, channelLabel, isNum, parseTime,
  apiClient, signOut, showError, clearError, toast, clear, setStatus, setBusy
} from "./console-common.js";
import { knowledgeTab } from "./knowledge.js";
import { regressionCard } from "./regression.js";
import { rolloutView } from "./rollout.js";
import { duration, statsView } from "./stats.js";
import { templateEditor } from "./yaml-editor.js";
import { postForEvents } from "./event-post.js";

(function () {
  const MAX_IMAGES = 4;
  const VALIDATE_DELAY_MS = 400;

  const ROLE_NAMES = { agent: "Agent", operator: "Operator", admin: "Admin" };

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------
  const state = {
    me: null,
    csrf: "",
    templates: [], // from GET /operator/api/templates
    channels: [], // [{channel, template}] as saved on the server
    channelDraft: new Map(), // channel -> template chosen but not saved yet
    view: null, // "templates" | "knowledge" | "stats" | "users"
    tpl: null, // {name, published, yaml} of the template open in the editor
    opening: null, // name of the template being loaded
    validation: null, // {text, ok, issues, preview} for the latest checked text
    validating: false,
    validateTimer: 0,
    validateSeq: 0,
    validateAbort: null,
    publishing: false,
    images: [], // [{file, url}]
    trying: false,
    tryAbort: null, // stops the running "try it" (closing its stream cancels it on the server)
    tryScreenshots: false, // the running "try it" has screenshots to read
    versions: [],
    historySeq: 0,
    users: [], // from GET /admin/api/users
    usersSeq: 0,
    addingUser: false
  };

  // ---------------------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------------------

  // ---------------------------------------------------------------------------------------
  // Formatting
  // ---------------------------------------------------------------------------------------
  function pct(v) {
    return isNum(v) ? Math.round(v * 100) + "%" : "—";
  }

  function count(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  function localized(obj, fallback) {
    if (obj && typeof obj === "object") return obj.en || obj.zh || fallback || "";
    if (typeof obj === "string" && obj) return obj;
    return fallback || "";
  }

  function formatTime(iso) {
    const d = parseTime(iso);
    if (!d) return iso ? String(iso) : "";
    try {
      return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (_) {
      return d.toLocaleString();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Notices
  // ---------------------------------------------------------------------------------------
  // ---------------------------------------------------------------------------------------
  // Server
  // ---------------------------------------------------------------------------------------
  function toLogin() {
    location.assign("/login?next=/operator");
  }

  /** What to tell the operator when the server did not say why a request failed. */
  function statusMessage(status) {
    if (status === 0) return "Can't reach the server. Check the connection and try again.";
    if (status === 401) return "Please sign in.";
    if (status === 403) return "You don't have permission to do that. Your session may have expired: reload the page.";
    if (status === 404) return "Not found. It may have been removed: reload the page.";
    if (status === 409) return "Someone else changed this at the same time. Reload and try again.";
    if (status === 413) return "The images are too large. Send smaller screenshots.";
    if (status === 429) return "Too many requests. Wait a moment and try again.";
    if (status >= 500) return "The server had a problem (" + status + "). Try again in a moment.";
    return "";
  }

  const api = apiClient({
    csrf: function () {
      return state.csrf;
    },
    onUnauthorized: toLogin,
    fallback: statusMessage
  });

  let editor = null; // the template editor (yaml-editor.js), made in wire()
  const knowledge = knowledgeTab(api); // the Knowledge view (knowledge.js)
  const statistics = statsView(api); // the Statistics view (stats.js)
  const rollout = rolloutView(api, { // the Rollout view (rollout.js)
    draft: function () {
      return state.tpl ? { name: state.tpl.name, yaml: draft() } : null;
    },
    published: loadTemplates // a promoted version is the live one now
  });
  const regression = regressionCard(api, { // the template's regression set and runs (regression.js)
    draft: draft,
    replaceDraft: replaceDraft,
    issues: function (text, issues) {
      applyValidation(text, false, issues, null);
    }
  });

  function tplPath(name, rest) {
    return "/operator/api/templates/" + encodeURIComponent(name) + (rest || "");
  }

  // ---------------------------------------------------------------------------------------
  // Start-up, navigation, sign-out
  // ---------------------------------------------------------------------------------------
  async function start() {
    wire();
    let me;
    try {
      me = await api("/console/api/me");
    } catch (e) {
      if (e.status !== 401) showError(e.message);
      return;
    }
    state.me = me;
    state.csrf = me.csrf_token || "";
    const name = String(me.name || "");
    setText($("user-name"), name);
    setText($("avatar"), initials(name));
    setText($("user-role"), me.role || "");
    $("nav-users").hidden = !isAdmin();
    $("console-switch").hidden = !isAdmin() && me.role !== "operator"; // operators read the agent console
    if (me.role && me.role !== "operator" && me.role !== "admin") {
      showError("This account (" + me.role + ") cannot change templates: the operator console needs an operator or admin account.");
    }
    await loadTemplates();
    route(false);
    window.addEventListener("hashchange", function () {
      route(true);
    });
  }

  function isAdmin() {
    return !!state.me && state.me.role === "admin";
  }

  function parseHash() {
    const h = location.hash.replace(/^#\/?/, "");
    const parts = h.split("/");
    if (parts[0] === "stats") return { view: "stats" };
    if (parts[0] === "rollout") return { view: "rollout" };
    if (parts[0] === "knowledge") return { view: "knowledge" };
    if (parts[0] === "users" && isAdmin()) return { view: "users" };
    if (parts[0] === "templates" && parts[1]) {
      let name = parts[1];
      try {
        name = decodeURIComponent(parts[1]);
      } catch (_) {
        /* keep as written */
      }
      return { view: "templates", name: name };
    }
    return { view: "templates", name: null };
  }

  function route(userAction) {
    const r = parseHash();
    showView(r.view, userAction);
    if (r.view === "templates" && r.name && (!state.tpl || state.tpl.name !== r.name) && state.opening !== r.name) {
      openTemplate(r.name, userAction);
    }
  }

  function showView(view, focus) {
    const changed = state.view !== view;
    state.view = view;
    $("view-templates").hidden = view !== "templates";
    $("view-knowledge").hidden = view !== "knowledge";
    $("view-stats").hidden = view !== "stats";
    $("view-rollout").hidden = view !== "rollout";
    $("view-users").hidden = view !== "users";
    for (const v of ["templates", "knowledge", "stats", "rollout", "users"]) {
      if (v === view) $("nav-" + v).setAttribute("aria-current", "page");
      else $("nav-" + v).removeAttribute("aria-current");
    }
    const navT = $("nav-templates");
    navT.setAttribute("href", state.tpl ? "#/templates/" + encodeURIComponent(state.tpl.name) : "#/templates");
    const titles = { knowledge: "Knowledge", stats: "Statistics", rollout: "Rollout", users: "Users" };
    document.title = (titles[view] || (state.tpl ? state.tpl.name : "Templates")) + " · Snapdesk · Operator";
    if (view === "knowledge" && changed) knowledge.show(focus);
    if (changed) statistics.show(view === "stats", focus);
    if (changed) rollout.show(view === "rollout", focus);
    if (view === "users" && changed) {
      loadUsers();
      if (focus) $("users-heading").focus();
    }
  }

  function goTemplate(name) {
    const target = "#/templates/" + encodeURIComponent(name);
    if (location.hash === target) {
      if (state.tpl && state.tpl.name === name) editor.focus();
      else openTemplate(name, true);
    } else {
      location.hash = target;
    }
  }

  async function logout() {
    const button = $("logout");
    button.disabled = true;
    await signOut(state.csrf);
  }

  // ---------------------------------------------------------------------------------------
  // Templates list and channels
  // ---------------------------------------------------------------------------------------
  async function loadTemplates() {
    const list = $("template-list");
    list.setAttribute("aria-busy", "true");
    setStatus($("templates-status"), state.templates.length ? "" : "Loading…", "busy");
    try {
      const data = await api("/operator/api/templates");
      state.templates = Array.isArray(data.templates) ? data.templates : [];
      state.channels = Array.isArray(data.channels) ? data.channels : [];
      setStatus($("templates-status"), count(state.templates.length, "template", "templates"));
    } catch (e) {
      setStatus($("templates-status"), "Not loaded", "bad");
      showError("Templates could not be loaded: " + e.message);
    } finally {
      list.setAttribute("aria-busy", "false");
    }
    renderTemplates();
    renderChannels();
    renderWorkspaceHead();
  }

  function findTemplate(name) {
    for (const t of state.templates) if (t.name === name) return t;
    return null;
  }

  function renderTemplates() {
    const list = $("template-list");
    clear(list);
    if (!state.templates.length) {
      list.appendChild(el("li", { class: "muted small", text: "No templates yet." }));
      return;
    }
    for (const t of state.templates) {
      const title = localized(t.title, t.name);
      const meta = el("div", { class: "op-tpl-meta" }, [el("code", { text: t.name })]);
      meta.appendChild(el("span", {
        text: isNum(t.published_version) ? "v" + t.published_version + " live" : "Not published",
        title: isNum(t.versions) ? count(t.versions, "version", "versions") + " in total" : null
      }));
      const chans = Array.isArray(t.channels) ? t.channels : [];
      if (chans.length) {
        const wrap = el("span", { class: "sr-only", text: "Used on:" });
        meta.appendChild(wrap);
        for (const c of chans) meta.appendChild(el("span", { class: "ch-badge ch-" + String(c).replace(/[^a-z0-9_-]/gi, ""), text: channelLabel(c) }));
      } else {
        meta.appendChild(el("span", { class: "op-chip", text: "No channel" }));
      }
      const edit = el("button", {
        type: "button", class: "btn btn-secondary btn-sm", "data-testid": "edit-template",
        "aria-label": "Edit " + title, text: "Edit"
      });
      edit.addEventListener("click", function () {
        goTemplate(t.name);
      });
      const item = el("li", { class: "op-tpl", "data-testid": "template-item", "data-name": t.name }, [
        el("div", { class: "op-tpl-title", text: title }), meta, edit
      ]);
      if (state.tpl && state.tpl.name === t.name) item.setAttribute("aria-current", "true");
      list.appendChild(item);
    }
  }

  function renderChannels() {
    const body = $("channel-rows");
    clear(body);
    if (!state.channels.length) {
      body.appendChild(el("tr", null, [el("td", { colspan: "2", class: "muted", text: "No channels are configured." })]));
      updateChannelSave();
      return;
    }
    for (const row of state.channels) {
      const channel = String(row.channel);
      const select = el("select", {
        class: "op-select", "data-testid": "channel-template", "data-channel": channel,
        "aria-label": "Template for " + channelLabel(channel)
      });
      const names = state.templates.map(function (t) {
        return t.name;
      });
      if (row.template && names.indexOf(row.template) === -1) names.push(row.template);
      for (const n of names) {
        const t = findTemplate(n);
        const title = t ? localized(t.title, n) : n;
        const twin = state.templates.some(function (o) { return o.name !== n && localized(o.title, o.name) === title; });
        select.appendChild(el("option", { value: n, text: twin ? title + " (" + n + ")" : title }));
      }
      select.value = state.channelDraft.has(channel) ? state.channelDraft.get(channel) : row.template;
      select.addEventListener("change", function () {
        if (select.value === row.template) state.channelDraft.delete(channel);
        else state.channelDraft.set(channel, select.value);
        select.classList.toggle("is-changed", state.channelDraft.has(channel));
        setStatus($("channels-status"), state.channelDraft.size ? "Unsaved changes" : "", state.channelDraft.size ? "busy" : null);
        updateChannelSave();
      });
      select.classList.toggle("is-changed", state.channelDraft.has(channel));
      body.appendChild(el("tr", null, [el("th", { scope: "row", text: channelLabel(channel) }), el("td", null, [select])]));
    }
    updateChannelSave();
  }

  function updateChannelSave() {
    $("save-channels").disabled = state.channelDraft.size === 0;
  }

  async function saveChannels() {
    const changes = Array.from(state.channelDraft.entries());
    if (!changes.length) return;
    const button = $("save-channels");
    button.disabled = true;
    setStatus($("channels-status"), "Saving…", "busy");
    const failed = [];
    for (const [channel, template] of changes) {
      try {
        await api("/operator/api/channels", { method: "POST", json: { channel: channel, template: template } });
        state.channelDraft.delete(channel);
      } catch (e) {
        failed.push(channelLabel(channel) + ": " + e.message);
      }
    }
    await loadTemplates();
    if (failed.length) {
      setStatus($("channels-status"), "Not saved", "bad");
      showError("Some channels were not saved. " + failed.join(" "));
    } else {
      setStatus($("channels-status"), "Saved", "good");
      toast(changes.length === 1 ? "Channel saved." : changes.length + " channels saved.");
    }
  }

  // ---------------------------------------------------------------------------------------
  // Editor
  // ---------------------------------------------------------------------------------------
  /** The template YAML in the editor: what Publish, Try it and regression runs use. */
  function draft() {
    return editor.value();
  }

  function isDirty() {
    return !!state.tpl && draft() !== state.tpl.yaml;
  }

  async function openTemplate(name, userAction) {
    if (state.tpl && state.tpl.name !== name && isDirty()) {
      if (!window.confirm("Discard your unsaved changes to “" + state.tpl.name + "”?")) {
        history.replaceState(null, "", "#/templates/" + encodeURIComponent(state.tpl.name));
        return;
      }
    }
    state.opening = name;
    setStatus($("validation-status"), "Loading…", "busy");
    let data;
    try {
      data = await api(tplPath(name));
    } catch (e) {
      if (state.opening === name) state.opening = null;
      setStatus($("validation-status"), "");
      showError(e.status === 404 ? "There is no template named “" + name + "”." : "The template could not be loaded: " + e.message);
      if (!state.tpl) history.replaceState(null, "", "#/templates");
      return;
    }
    if (state.opening !== name) return;
    state.opening = null;
    state.tpl = { name: data.name || name, published: isNum(data.published_version) ? data.published_version : null, yaml: String(data.yaml || "") };
    state.validation = null;
    $("workspace-empty").hidden = true;
    $("workspace").hidden = false;
    setEditorText(state.tpl.yaml);
    resetTryResult();
    regression.open(state.tpl.name);
    renderTemplates();
    renderWorkspaceHead();
    showView("templates", false);
    validateNow();
    loadVersions();
    if (userAction) $("ws-title").focus();
  }

  function setEditorText(text) {
    editor.setValue(text);
    updateCursor();
    updateDraftState();
  }

  function renderWorkspaceHead() {
    if (!state.tpl) return;
    const t = findTemplate(state.tpl.name);
    setText($("ws-title"), t ? localized(t.title, state.tpl.name) : state.tpl.name);
    setText($("ws-name"), state.tpl.name);
    if (t && isNum(t.published_version)) state.tpl.published = t.published_version;
    setText($("ws-live"), isNum(state.tpl.published) ? "Live: version " + state.tpl.published : "Not published yet");
    updateDraftState();
  }

  function updateDraftState() {
    const badge = $("ws-draft");
    const dirty = isDirty();
    badge.setAttribute("data-state", dirty ? "dirty" : "clean");
    setText(badge, dirty ? "Unsaved changes" : state.tpl && isNum(state.tpl.published) ? "Same as live version" : "No changes");
    $("revert").disabled = !dirty;
    updatePublish();
    regression.draftChanged();
  }

  function currentIssues() {
    const v = state.validation;
    if (!v || v.text !== draft()) return null;
    return v.issues;
  }

  function updatePublish() {
    const button = $("publish");
    const v = state.validation;
    const fresh = v && v.text === draft();
    let why = "";
    if (!state.tpl) why = "Open a template first.";
    else if (state.publishing) why = "Publishing…";
    else if (!fresh && (state.validating || state.validateTimer)) why = "Checking the template…";
    else if (fresh && (v.ok === false || v.issues.length)) why = "Fix the issues before publishing.";
    button.disabled = !!why;
    setText($("publish-why"), why);
    if (why) button.setAttribute("title", why);
    else button.removeAttribute("title");
  }

  /** A changed draft from the server (threshold advice) replaces the editor's text: an edit, checked and unsaved. */
  function replaceDraft(text) {
    editor.edit(text); // an edit like the operator's own: marked unsaved, validated, undoable
  }

  function onEditorInput() {
    updateCursor();
    updateDraftState();
    scheduleValidate();
  }

  function scheduleValidate() {
    clearTimeout(state.validateTimer);
    setStatus($("validation-status"), "Checking…", "busy");
    state.validateTimer = setTimeout(function () {
      state.validateTimer = 0;
      validateNow();
    }, VALIDATE_DELAY_MS);
    updatePublish();
  }

  async function validateNow() {
    clearTimeout(state.validateTimer);
    state.validateTimer = 0;
    if (!state.tpl) return;
    if (state.validateAbort) state.validateAbort.abort();
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    state.validateAbort = controller;
    const seq = ++state.validateSeq;
    const text = draft();
    state.validating = true;
    setStatus($("validation-status"), "Checking…", "busy");
    updatePublish();
    try {
      const data = await api("/operator/api/validate", { method: "POST", json: { yaml: text }, signal: controller ? controller.signal : undefined });
      if (seq !== state.validateSeq) return;
      applyValidation(text, data.ok !== false, Array.isArray(data.issues) ? data.issues : [], data.preview || null);
    } catch (e) {
      if (seq !== state.validateSeq || (e && e.name === "AbortError")) return;
      setStatus($("validation-status"), "Couldn't check: " + e.message, "bad");
      state.validation = null;
    } finally {
      if (seq === state.validateSeq) {
        state.validating = false;
        state.validateAbort = null;
        updatePublish();
      }
    }
  }

  function applyValidation(text, ok, issues, preview) {
    state.validation = { text: text, ok: ok && !issues.length, issues: issues, preview: preview };
    renderIssues(issues, text);
    if (preview !== undefined) renderPreview(preview);
    if (text === draft()) {
      if (issues.length) setStatus($("validation-status"), count(issues.length, "issue", "issues"), "bad");
      else setStatus($("validation-status"), ok ? "Valid" : "Not valid", ok ? "good" : "bad");
    }
    updatePublish();
  }

  function renderIssues(issues, text) {
    const list = $("issue-list");
    clear(list);
    const issueLines = new Set();
    for (const issue of issues) {
      const field = issue && issue.field ? String(issue.field) : "";
      let line = issue && isNum(issue.line) ? issue.line : null;
      const guessed = line === null && field ? fieldLine(text, field) : null;
      const target = line !== null ? line : guessed;
      if (line !== null) issueLines.add(line);
      const button = el("button", { type: "button", class: "op-issue" }, [
        el("span", { class: "op-issue-line", text: line !== null ? "Line " + line : guessed !== null ? "≈ Line " + guessed : "—" }),
        el("span", { class: "op-issue-field", text: field || "(template)" }),
        el("span", { class: "op-issue-msg", text: issue && issue.message ? String(issue.message) : "Not valid." })
      ]);
      if (target !== null) {
        button.setAttribute("aria-label", (field ? field + ": " : "") + (issue.message || "") + " — go to line " + target);
        button.addEventListener("click", function () {
          goToLine(target);
        });
      } else {
        button.addEventListener("click", function () {
          editor.focus();
        });
      }
      list.appendChild(el("li", { "data-testid": "issue", "data-field": field, "data-line": line !== null ? line : "" }, [button]));
    }
    $("issues-ok").hidden = issues.length > 0;
    editor.markIssues(issueLines);
  }

  /** The line a dotted field path ("system_prompt.en", "examples.2.expect") starts on, found by indentation. */
  function fieldLine(text, field) {
    const lines = String(text).split("\n");
    const parts = field.split(/[.[\]]+/).filter(Boolean);
    let from = 0;
    let parentIndent = -1;
    let found = null;
    for (const part of parts) {
      let hit = -1;
      if (/^\d+$/.test(part)) {
        let index = -1;
        let itemIndent = null;
        for (let i = from; i < lines.length; i++) {
          const m = /^(\s*)(- |-$)/.exec(lines[i]);
          const indent = lines[i].search(/\S/);
          if (indent !== -1 && indent <= parentIndent && !/^\s*#/.test(lines[i])) break;
          if (m && (itemIndent === null || m[1].length === itemIndent)) {
            itemIndent = m[1].length;
            index++;
            if (index === +part) {
              hit = i;
              parentIndent = itemIndent;
              break;
            }
          }
        }
      } else {
        const re = new RegExp("^(\\s*)(- )?[\"']?" + part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "[\"']?\\s*:");
        for (let i = from; i < lines.length; i++) {
          const indent = lines[i].search(/\S/);
          if (indent !== -1 && indent <= parentIndent && i > from && !/^\s*#/.test(lines[i])) break;
          const m = re.exec(lines[i]);
          if (m && m[1].length + (m[2] ? 2 : 0) > parentIndent) {
            hit = i;
            parentIndent = m[1].length + (m[2] ? 2 : 0);
            break;
          }
        }
      }
      if (hit === -1) break;
      found = hit + 1;
      from = hit + 1;
      if (/^\d+$/.test(part)) from = hit; // the item's first key is on the dash line
    }
    return found;
  }

  function goToLine(line) {
    editor.goToLine(line);
    updateCursor();
  }

  function updateCursor() {
    const at = editor.cursor();
    setText($("cursor-pos"), "Ln " + at.line + ", Col " + at.col);
  }

  function renderPreview(preview) {
    const en = $("preview-en");
    const zh = $("preview-zh");
    const note = $("preview-note");
    if (preview && typeof preview === "object") {
      setText(en, preview.en || "");
      setText(zh, preview.zh || "");
      note.hidden = true;
      selectPreview(currentPreviewLang(), false);
    } else {
      setText(en, "");
      setText(zh, "");
      en.hidden = true;
      zh.hidden = true;
      setText(note, "The preview appears once the template renders without errors.");
      note.hidden = false;
    }
  }

  function currentPreviewLang() {
    return $("preview-tab-zh").getAttribute("aria-selected") === "true" ? "zh" : "en";
  }

  function selectPreview(lang, focus) {
    for (const l of ["en", "zh"]) {
      const tab = $("preview-tab-" + l);
      const on = l === lang;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      $("preview-" + l).hidden = !on || !$("preview-note").hidden;
      if (on && focus) tab.focus();
    }
  }

  async function publish() {
    if (!state.tpl || $("publish").disabled) return;
    const name = state.tpl.name;
    const text = draft();
    const next = isNum(state.tpl.published) ? " as version " + (state.tpl.published + 1) : "";
    const t = findTemplate(name);
    const chans = t && Array.isArray(t.channels) && t.channels.length ? " It goes live at once on: " + t.channels.map(channelLabel).join(", ") + "." : "";
    const same = text === state.tpl.yaml ? " The draft is the same as the live version." : "";
    const checked = await regression.publishSummary(tplPath(name, "/publish-check"), text);
    if (!state.tpl || state.tpl.name !== name || draft() !== text) return; // another template or text meanwhile
    if (!window.confirm("Publish “" + name + "”" + next + "?" + chans + same + (checked ? "\n\n" + checked : ""))) return;
    state.publishing = true;
    updatePublish();
    setText($("publish"), "Publishing…");
    try {
      const data = await regression.publish(tplPath(name, "/publish"), text); // asks again when its run does worse
      if (!data) return;
      if (state.tpl && state.tpl.name === name) {
        state.tpl.yaml = text;
        if (isNum(data.version)) state.tpl.published = data.version;
      }
      clearError();
      toast("Published “" + name + "”" + (isNum(data.version) ? " as version " + data.version : "") + ".");
      await loadTemplates();
      loadVersions();
    } catch (e) {
      if (e.issues) applyValidation(text, false, e.issues, state.validation && state.validation.text === text ? state.validation.preview : null);
      showError("Not published: " + e.message);
    } finally {
      state.publishing = false;
      setText($("publish"), "Publish");
      updateDraftState();
    }
  }

  async function revert() {
    if (!state.tpl) return;
    const name = state.tpl.name;
    if (isDirty() && !window.confirm("Discard your changes and go back to the published version of “" + name + "”?")) return;
    let text = state.tpl.yaml;
    try {
      const data = await api(tplPath(name));
      text = String(data.yaml || "");
      state.tpl.yaml = text;
      if (isNum(data.published_version)) state.tpl.published = data.published_version;
    } catch (e) {
      showError("Could not load the published version, so the editor went back to the copy loaded earlier: " + e.message);
    }
    setEditorText(text);
    renderWorkspaceHead();
    validateNow();
    toast("Reverted to the published version.");
  }

  // ---------------------------------------------------------------------------------------
  // Try it
  // ---------------------------------------------------------------------------------------
  function addImages(files) {
    const rejected = [];
    let over = 0;
    for (const file of Array.from(files || [])) {
      if (!file) continue;
      if (file.type && file.type.indexOf("image/") !== 0) {
        rejected.push("“" + (file.name || "file") + "” is not an image.");
        continue;
      }
      if (state.images.length >= MAX_IMAGES) {
        over++;
        continue;
      }
      state.images.push({ file: file, url: URL.createObjectURL(file) });
    }
    if (over) rejected.push("At most " + MAX_IMAGES + " screenshots can be attached; " + count(over, "image was", "images were") + " left out.");
    if (rejected.length) setStatus($("try-status"), rejected.join(" "), "bad");
    else setStatus($("try-status"), "");
    renderThumbs();
  }

  function removeImage(index) {
    const item = state.images[index];
    if (!item) return;
    URL.revokeObjectURL(item.url);
    state.images.splice(index, 1);
    renderThumbs();
    const buttons = $("try-thumbs").querySelectorAll("button");
    if (buttons.length) buttons[Math.min(index, buttons.length - 1)].focus();
    else $("try-images").focus();
  }

  function renderThumbs() {
    const list = $("try-thumbs");
    clear(list);
    state.images.forEach(function (item, i) {
      const name = item.file.name || "pasted image";
      const remove = el("button", { type: "button", "aria-label": "Remove screenshot " + (i + 1) + " (" + name + ")", title: "Remove", text: "×" });
      remove.addEventListener("click", function () {
        removeImage(i);
      });
      list.appendChild(el("li", { class: "op-thumb", "data-testid": "try-thumb" }, [
        el("img", { src: item.url, alt: "Screenshot " + (i + 1) + ": " + name }),
        el("span", { class: "op-thumb-name", text: name, title: name }),
        remove
      ]));
    });
  }

  function onPaste(event) {
    const items = event.clipboardData && event.clipboardData.items;
    if (!items) return;
    const files = [];
    let hasText = false;
    for (const it of Array.from(items)) {
      if (it.kind === "file" && it.type.indexOf("image/") === 0) {
        const f = it.getAsFile();
        if (f) files.push(f.name && f.name !== "image.png" ? f : new File([f], "pasted-" + (state.images.length + files.length + 1) + ".png", { type: f.type || "image/png" }));
      } else if (it.kind === "string" && it.type === "text/plain") {
        hasText = true;
      }
    }
    if (files.length) {
      if (!hasText) event.preventDefault();
      addImages(files);
    }
  }

  const TRY_PLACEHOLDER = "Ask a question (and attach a screenshot) to see how the bot would answer with this draft.";

  function resetTryResult(failure) {
    $("try-output").hidden = true;
    $("try-live").hidden = true;
    const empty = $("try-empty");
    setStatus(empty, failure ? "No result: " + failure : TRY_PLACEHOLDER, failure ? "bad" : null);
    empty.hidden = false;
    if (!failure) setStatus($("try-status"), "");
  }

  async function runTry(event) {
    if (event) event.preventDefault();
    if (!state.tpl || state.trying) return;
    const text = $("try-text").value;
    if (!text.trim() && !state.images.length) {
      setStatus($("try-status"), "Write a question or attach a screenshot.", "bad");
      $("try-text").focus();
      return;
    }
    const yaml = draft();
    const form = new FormData();
    form.append("yaml", yaml);
    form.append("text", text);
    form.append("language", $("try-language").value || "auto");
    for (const item of state.images) form.append("images", item.file, item.file.name || "screenshot.png");

    state.trying = true;
    const button = $("try-run");
    button.disabled = true;
    setText(button, "Running…");
    const stop = $("try-stop");
    stop.hidden = false;
    const controller = new AbortController();
    state.tryAbort = controller;
    $("try-result").setAttribute("aria-busy", "true");
    startTryProgress(state.images.length > 0);
    const started = Date.now();
    setStatus($("try-status"), "Running…", "busy");
    const tick = setInterval(function () {
      setStatus($("try-status"), "Running… " + Math.round((Date.now() - started) / 1000) + " s", "busy");
    }, 1000);
    try {
      const data = await postForEvents("/operator/api/try", {
        form: form, csrf: state.csrf, signal: controller.signal, fallback: statusMessage, onEvent: onTryEvent
      });
      renderTryResult(data);
      setStatus($("try-status"), "Done", "good");
    } catch (e) {
      if (e && e.name === "AbortError") {
        resetTryResult();
        setStatus($("try-status"), "Stopped");
      } else if (e.status === 401) {
        toLogin();
      } else if (e.issues) {
        applyValidation(yaml, false, e.issues, null);
        setStatus($("try-status"), "The draft has issues", "bad");
        resetTryResult("the draft has issues; fix them and run again.");
        showError("The draft can't be run: " + e.message);
      } else {
        setStatus($("try-status"), "Failed", "bad");
        resetTryResult(e.message);
        showError("Try it failed: " + e.message);
      }
    } finally {
      clearInterval(tick);
      state.trying = false;
      state.tryAbort = null;
      stop.hidden = true;
      button.disabled = false;
      setText(button, "Run");
      $("try-result").setAttribute("aria-busy", "false");
    }
  }

  // The stages of a running "try it" as the server reports them, and the reply as it is written.
  function startTryProgress(screenshots) {
    clear($("try-stages"));
    setText($("try-draft"), "");
    $("try-draft-wrap").hidden = true;
    $("try-empty").hidden = true;
    $("try-output").hidden = true;
    $("try-live").hidden = false;
    tryStage("draft", "Checking the draft");
    state.tryScreenshots = screenshots;
  }

  /** Mark `key` as the stage under way (the one before it is done), or as done with `done`. */
  function tryStage(key, label, done) {
    const list = $("try-stages");
    let item = null;
    for (const li of Array.from(list.children)) {
      if (li.getAttribute("data-stage") === key) item = li;
      else if (li.getAttribute("data-state") === "active") li.setAttribute("data-state", "done");
    }
    if (!item) {
      item = el("li", { class: "op-stage", "data-testid": "try-stage", "data-stage": key });
      list.appendChild(item);
    }
    item.setAttribute("data-state", done ? "done" : "active");
    setText(item, label);
  }

  function onTryEvent(name, data) {
    const d = data && typeof data === "object" ? data : {};
    if (name === "draft") {
      tryStage("draft", "Draft checked", true);
      if (state.tryScreenshots) tryStage("screenshots", "Reading the screenshots");
    } else if (name === "screenshot") {
      tryStage("screenshots", "Reading screenshot " + d.number + " of " + d.of);
    } else if (name === "screenshots") {
      const unreadable = isNum(d.unreadable) && d.unreadable ? ", " + d.unreadable + " unreadable" : "";
      tryStage("screenshots", count(isNum(d.count) ? d.count : 0, "screenshot", "screenshots") + " read and redacted" + unreadable, true);
    } else if (name === "queued") {
      tryStage("queued", "Waiting for a place in the model's queue");
    } else if (name === "generating") {
      tryStage("queued", "Got a place in the model's queue", true);
      tryStage("generating", "Generating the reply");
      $("try-draft-wrap").hidden = false;
    } else if (name === "text" && typeof d.delta === "string") {
      const box = $("try-draft");
      box.appendChild(document.createTextNode(d.delta));
      box.scrollTop = box.scrollHeight;
    }
  }

  function stopTry() {
    if (state.tryAbort) state.tryAbort.abort();
  }

  function renderTryResult(data) {
    const d = data.decision && typeof data.decision === "object" ? data.decision : {};
    const handover = d.handover === true;
    const decision = $("try-decision");
    decision.setAttribute("data-handover", handover ? "true" : "false");
    decision.setAttribute("data-reason", d.reason ? String(d.reason) : "");
    setText($("try-decision-main"), handover ? "Hand over" + (d.reason ? " · " + reasonLabel(d.reason) : "") : "Answer");
    setText($("try-decision-detail"), d.detail ? String(d.detail) : handover ? "" : "The bot would send this reply.");
    setText($("try-reply"), data.reply === null || data.reply === undefined ? "" : String(data.reply));
    const conf = $("try-confidence");
    setText(conf, pct(data.confidence));
    conf.setAttribute("title", isNum(data.confidence) ? String(data.confidence) : "No confidence was measured.");
    setText($("try-minprob"), isNum(data.min_token_prob) ? String(Math.round(data.min_token_prob * 1000) / 1000) : "—");
    const pt = isNum(data.prompt_tokens) ? data.prompt_tokens : "—";
    const ct = isNum(data.completion_tokens) ? data.completion_tokens : "—";
    setText($("try-tokens"), pt + " prompt · " + ct + " completion");
    const latency = $("try-latency");
    setText(latency, isNum(data.latency_ms) ? duration(data.latency_ms / 1000) : "—");
    if (isNum(data.first_token_ms)) latency.appendChild(el("span", { class: "op-fact-sub", text: "first token after " + duration(data.first_token_ms / 1000) }));
    $("try-empty").hidden = true;
    $("try-live").hidden = true;
    $("try-output").hidden = false;
  }

  // ---------------------------------------------------------------------------------------
  // History
  // ---------------------------------------------------------------------------------------
  async function loadVersions() {
    if (!state.tpl) return;
    const name = state.tpl.name;
    const seq = ++state.historySeq;
    setStatus($("history-status"), "Loading…", "busy");
    $("versions").setAttribute("aria-busy", "true");
    try {
      const data = await api(tplPath(name, "/versions"));
      if (seq !== state.historySeq) return;
      state.versions = Array.isArray(data.versions) ? data.versions : [];
      renderVersions();
      setStatus($("history-status"), count(state.versions.length, "version", "versions"));
    } catch (e) {
      if (seq !== state.historySeq) return;
      setStatus($("history-status"), "Not loaded", "bad");
      showError("The history could not be loaded: " + e.message);
    } finally {
      if (seq === state.historySeq) $("versions").setAttribute("aria-busy", "false");
    }
  }

  function diffClass(line) {
    if (line.indexOf("+++") === 0 || line.indexOf("---") === 0) return "diff-meta";
    if (line.indexOf("@@") === 0) return "diff-hunk";
    if (line.charAt(0) === "+") return "diff-add";
    if (line.charAt(0) === "-") return "diff-del";
    return null;
  }

  function renderVersions() {
    const list = $("versions");
    clear(list);
    if (!state.versions.length) {
      list.appendChild(el("li", { class: "muted small", text: "No versions yet." }));
      return;
    }
    state.versions.forEach(function (v, i) {
      const live = v.live === true;
      const oldest = i === state.versions.length - 1;
      const diffText = typeof v.diff === "string" ? v.diff : "";
      const lines = diffText ? diffText.replace(/\n$/, "").split("\n") : [];
      let added = 0;
      let removed = 0;
      const pre = el("pre", { class: "op-diff", "data-testid": "diff", tabindex: "0", "aria-label": "Changes in version " + v.version });
      for (const line of lines) {
        const cls = diffClass(line);
        if (cls === "diff-add") added++;
        if (cls === "diff-del") removed++;
        pre.appendChild(el("span", { class: cls, text: line }));
      }
      const when = v.published_at || v.created_at;
      const meta = el("span", { class: "op-version-meta" });
      meta.appendChild(document.createTextNode("by "));
      meta.appendChild(el("strong", { text: v.author ? String(v.author) : "unknown" }));
      if (when) {
        meta.appendChild(document.createTextNode(" · "));
        meta.appendChild(el("time", { datetime: String(when), text: formatTime(when), title: v.created_at && v.published_at && v.created_at !== v.published_at ? "Created " + formatTime(v.created_at) : null }));
      }
      const restore = el("button", {
        type: "button", class: "btn btn-secondary btn-sm", "data-testid": "restore",
        "aria-label": "Restore version " + v.version, text: "Restore"
      });
      if (live) {
        restore.disabled = true;
        restore.setAttribute("title", "This version is live.");
      }
      restore.addEventListener("click", function () {
        restoreVersion(v.version);
      });
      const head = el("div", { class: "op-version-head" }, [
        el("span", { class: "op-version-no", text: "Version " + v.version }),
        live ? el("span", { class: "badge op-live", "data-testid": "live", text: "Live" }) : null,
        meta,
        el("span", { class: "op-spacer" }),
        lines.length ? el("span", { class: "op-diffstat", "aria-label": added + " lines added, " + removed + " removed" }, [
          el("span", { class: "a", text: "+" + added }), document.createTextNode(" "), el("span", { class: "d", text: "−" + removed })
        ]) : null,
        restore
      ]);
      const item = el("li", { class: "op-version", "data-testid": "version", "data-version": String(v.version), "data-live": live ? "true" : "false" }, [head]);
      if (lines.length) {
        item.appendChild(pre);
      } else {
        pre.hidden = true;
        item.appendChild(pre);
        item.appendChild(el("p", { class: "op-diff-note", text: oldest ? "First version: nothing earlier to compare with." : "No changes from the previous version." }));
      }
      list.appendChild(item);
    });
  }

  async function restoreVersion(version) {
    if (!state.tpl) return;
    const name = state.tpl.name;
    const lost = isDirty() ? " Your unsaved changes in the editor will be replaced." : "";
    if (!window.confirm("Restore version " + version + " of “" + name + "”? It is published again as a new version and goes live at once." + lost)) return;
    try {
      const data = await api(tplPath(name, "/restore"), { method: "POST", json: { version: version } });
      clearError();
      toast("Version " + version + " restored" + (isNum(data.version) ? " as version " + data.version : "") + ".");
      try {
        const fresh = await api(tplPath(name));
        if (state.tpl && state.tpl.name === name) {
          state.tpl.yaml = String(fresh.yaml || "");
          state.tpl.published = isNum(fresh.published_version) ? fresh.published_version : data.version;
          setEditorText(state.tpl.yaml);
          validateNow();
        }
      } catch (e) {
        showError("Restored, but the editor could not load the new version: " + e.message);
      }
      await loadTemplates();
      loadVersions();
    } catch (e) {
      showError("Version " + version + " was not restored: " + e.message);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Users (admins only)
  // ---------------------------------------------------------------------------------------
  function roleLabel(role) {
    return Object.prototype.hasOwnProperty.call(ROLE_NAMES, role) ? ROLE_NAMES[role] : String(role || "");
  }

  function userPath(name, rest) {
    return "/admin/api/users" + (name === undefined ? "" : "/" + encodeURIComponent(name)) + (rest || "");
  }

  async function loadUsers() {
    if (!isAdmin()) return;
    const seq = ++state.usersSeq;
    const body = $("user-rows");
    body.setAttribute("aria-busy", "true");
    setStatus($("users-status"), "Loading…", "busy");
    try {
      const data = await api(userPath());
      if (seq !== state.usersSeq) return;
      state.users = Array.isArray(data.users) ? data.users : [];
      renderUsers();
      const active = state.users.filter(function (u) { return !u.disabled; }).length;
      setStatus($("users-status"), count(state.users.length, "account", "accounts") + ", " + active + " active");
    } catch (e) {
      if (seq !== state.usersSeq) return;
      setStatus($("users-status"), "Not loaded", "bad");
      showError("The accounts could not be loaded: " + e.message);
    } finally {
      if (seq === state.usersSeq) body.setAttribute("aria-busy", "false");
    }
  }

  function renderUsers() {
    const body = $("user-rows");
    clear(body);
    if (!state.users.length) {
      body.appendChild(el("tr", null, [el("td", { colspan: "5", class: "muted", text: "No accounts yet." })]));
      return;
    }
    const me = state.me ? String(state.me.name || "") : "";
    for (const u of state.users) {
      const name = String(u.name || "");
      const disabled = !!u.disabled;
      const self = name === me;
      const nameCell = el("td", null, [el("span", { class: "op-user-name", text: name })]);
      if (self) nameCell.appendChild(el("span", { class: "op-chip op-you", text: "You" }));
      const statusCell = el("td", { class: "op-user-status" }, [el("span", {
        class: "status-pill " + (disabled ? "op-st-disabled" : "op-st-active"), "data-testid": "user-status",
        text: disabled ? "Disabled" : "Active"
      })]);
      if (u.must_change_password && !disabled) {
        statusCell.appendChild(el("span", {
          class: "status-pill op-st-reset", "data-testid": "must-change-password",
          title: "A temporary password was set: they choose their own at the next sign-in", text: "New password due"
        }));
      }
      const actions = el("td", { class: "op-user-actions" });
      if (!self) {
        if (disabled) {
          actions.appendChild(userButton(name, "enable-user", "Enable", "Enable " + name, "btn-secondary", function (button) {
            enableUser(name, button);
          }));
        } else {
          actions.appendChild(userButton(name, "reset-password", "Reset password", "Reset the password of " + name, "btn-secondary", function () {
            openResetForm(name);
          }));
          actions.appendChild(userButton(name, "sign-out-user", "Sign out", "Sign " + name + " out everywhere", "btn-secondary", function (button) {
            signOutUser(name, button);
          }));
          actions.appendChild(userButton(name, "disable-user", "Disable", "Disable " + name, "btn-secondary op-danger", function (button) {
            disableUser(name, button);
          }));
        }
      }
      body.appendChild(el("tr", {
        class: "op-user-row", "data-testid": "user-row", "data-name": name, "data-role": String(u.role || ""),
        "data-disabled": disabled ? "true" : "false", "data-must-change": u.must_change_password ? "true" : "false"
      }, [nameCell, displayNameCell(u), roleCell(u, self), statusCell, actions]));
    }
  }

  function userButton(name, testid, label, aria, kind, onClick) {
    const button = el("button", { type: "button", class: "btn btn-sm " + kind, "data-testid": testid, "aria-label": aria, text: label });
    button.addEventListener("click", function () {
      onClick(button);
    });
    return button;
  }

  /** The role, with a picker for other accounts (your own role is not yours to change). */
  function roleCell(u, self) {
    const name = String(u.name || "");
    const role = String(u.role || "");
    if (self || u.disabled) return el("td", { "data-testid": "user-role-text", text: roleLabel(role) });
    const select = el("select", { class: "op-select op-role-select", "data-testid": "user-role", "aria-label": "Role of " + name });
    for (const r of Object.keys(ROLE_NAMES)) {
      const option = el("option", { value: r, text: ROLE_NAMES[r] });
      if (r === role) option.selected = true;
      select.appendChild(option);
    }
    select.addEventListener("change", async function () {
      const wanted = select.value;
      const warning = wanted === "operator" ? " Conversations they have claimed go back to the queue." : "";
      if (!window.confirm("Make " + name + " an " + roleLabel(wanted).toLowerCase() + "?" + warning)) {
        select.value = role;
        return;
      }
      select.disabled = true;
      try {
        const data = await api(userPath(name, "/role"), { method: "POST", json: { role: wanted } });
        clearError();
        const released = Array.isArray(data.released) ? data.released.length : 0;
        toast(name + " is now " + roleLabel(data.role || wanted).toLowerCase() + "." +
          (released ? " " + count(released, "claimed conversation went", "claimed conversations went") + " back to the queue." : ""));
        await loadUsers();
      } catch (e) {
        showError("The role was not changed: " + e.message);
        select.value = role;
        select.disabled = false;
      }
    });
    return el("td", null, [select]);
  }

  /** A row under the account's row: the temporary password the admin gives the person. */
  function openResetForm(name) {
    const rows = $("user-rows");
    const existing = rows.querySelector("[data-testid=reset-password-row]");
    if (existing) existing.remove();
    const row = rows.querySelector('[data-testid=user-row][data-name="' + CSS.escape(name) + '"]');
    if (!row) return;
    const inputId = "reset-password-" + Math.random().toString(36).slice(2);
    const input = el("input", {
      class: "op-input op-reset-input", id: inputId, type: "password", "data-testid": "reset-password-input",
      autocomplete: "new-password", maxlength: "1024", minlength: "10", "aria-describedby": inputId + "-help"
    });
    const save = el("button", { type: "submit", class: "btn btn-primary btn-sm", "data-testid": "save-reset-password", text: "Set password" });
    const cancel = el("button", { type: "button", class: "btn btn-ghost btn-sm", "data-testid": "cancel-reset-password", text: "Cancel" });
    const form = el("form", { class: "op-reset-form", action: "#", novalidate: true, "data-name": name }, [
      el("label", { for: inputId, text: "Temporary password for " + name }),
      input, save, cancel,
      el("span", {
        class: "op-field-help", id: inputId + "-help",
        text: "At least 10 characters. " + name + " is signed out now and must choose their own password at the next sign-in. Give it to them over a safe channel."
      })
    ]);
    const cell = el("td", { colspan: "5" }, [form]);
    const formRow = el("tr", { class: "op-reset-row", "data-testid": "reset-password-row", "data-name": name }, [cell]);
    row.after(formRow);
    function close() {
      formRow.remove();
      const again = $("user-rows").querySelector('[data-testid=user-row][data-name="' + CSS.escape(name) + '"] [data-testid=reset-password]');
      if (again) again.focus();
    }
    cancel.addEventListener("click", close);
    input.addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        e.preventDefault();
        close();
      }
    });
    form.addEventListener("submit", async function (e) {
      e.preventDefault();
      if (input.value.length < 10) {
        showError("A password has at least 10 characters.");
        input.focus();
        return;
      }
      setBusy(save, true);
      try {
        await api(userPath(name, "/reset-password"), { method: "POST", json: { password: input.value } });
        input.value = "";
        clearError();
        toast("New password set for " + name + ": they were signed out and choose their own at the next sign-in.");
        await loadUsers();
      } catch (err) {
        showError("The password was not reset: " + err.message);
        setBusy(save, false);
        input.focus();
      }
    });
    input.focus();
  }

  /** Enable or disable an account, then list the accounts again. */
  async function switchAccount(name, button, verb, done, failed) {
    setBusy(button, true);
    try {
      await api(userPath(name, "/" + verb), { method: "POST" });
      clearError();
      toast(done);
    } catch (e) {
      showError(failed + e.message);
      setBusy(button, false);
      return;
    }
    await loadUsers();
    $("users-heading").focus();
  }

  async function enableUser(name, button) {
    await switchAccount(name, button, "enable", "Enabled " + name + ": they can sign in again.", "The account was not enabled: ");
  }

  async function signOutUser(name, button) {
    if (!window.confirm("Sign “" + name + "” out everywhere? Every open console of theirs closes; they can sign in again.")) return;
    setBusy(button, true);
    try {
      const data = await api(userPath(name, "/sign-out"), { method: "POST" });
      clearError();
      const ended = typeof data.sessions_ended === "number" ? data.sessions_ended : 0;
      toast("Signed " + name + " out everywhere (" + count(ended, "session", "sessions") + " ended).");
    } catch (e) {
      showError(name + " was not signed out: " + e.message);
    } finally {
      setBusy(button, false);
    }
  }

  /** The name users see on the account's replies, with an inline editor. */
  function displayNameCell(u) {
    const name = String(u.name || "");
    const shown = String(u.display_name || name);
    const cell = el("td", { class: "op-dn-cell" });
    function view() {
      clear(cell);
      const text = el("span", {
        class: "op-dn" + (shown === name ? " is-default" : ""), "data-testid": "display-name", text: shown,
        title: shown === name ? "No display name set: users see the user name" : null
      });
      const edit = el("button", {
        type: "button", class: "btn btn-ghost btn-sm op-dn-edit", "data-testid": "edit-display-name",
        "aria-label": "Change the display name of " + name, title: "Change the display name", text: "Edit"
      });
      edit.addEventListener("click", editor);
      cell.appendChild(el("div", { class: "op-dn-wrap" }, [text, edit]));
    }
    function editor() {
      clear(cell);
      const input = el("input", {
        class: "op-input op-dn-input", "data-testid": "display-name-input", maxlength: "60", value: shown,
        "aria-label": "Display name of " + name, autocomplete: "off", spellcheck: "false"
      });
      const save = el("button", { type: "submit", class: "btn btn-primary btn-sm", "data-testid": "save-display-name", text: "Save" });
      const cancel = el("button", { type: "button", class: "btn btn-ghost btn-sm", "data-testid": "cancel-display-name", text: "Cancel" });
      const form = el("form", { class: "op-dn-form", action: "#", novalidate: true }, [input, save, cancel]);
      form.addEventListener("submit", async function (e) {
        e.preventDefault();
        const value = input.value.trim();
        if (!value) {
          showError("A display name cannot be empty.");
          input.focus();
          return;
        }
        setBusy(save, true);
        try {
          const data = await api(userPath(name, "/display-name"), { method: "POST", json: { display_name: value } });
          clearError();
          toast("Users now see " + name + " as “" + String(data.display_name || value) + "”.");
          await loadUsers();
          const again = document.querySelector('[data-testid=user-row][data-name="' + CSS.escape(name) + '"] [data-testid=edit-display-name]');
          if (again) again.focus();
        } catch (err) {
          showError("The display name was not changed: " + err.message);
          setBusy(save, false);
          input.focus();
        }
      });
      cancel.addEventListener("click", function () {
        view();
        cell.querySelector("[data-testid=edit-display-name]").focus();
      });
      input.addEventListener("keydown", function (e) {
        if (e.key === "Escape") {
          e.preventDefault();
          e.stopPropagation();
          cancel.click();
        }
      });
      cell.appendChild(form);
      input.focus();
      input.select();
    }
    view();
    return cell;
  }

  async function addUser(event) {
    if (event) event.preventDefault();
    if (state.addingUser) return;
    const nameInput = $("new-user-name");
    const passwordInput = $("new-user-password");
    const name = nameInput.value.trim();
    const role = $("new-user-role").value;
    const password = passwordInput.value;
    const displayInput = $("new-user-display-name");
    const displayName = displayInput.value.trim();
    if (!name) {
      showError("Enter a user name for the new account.");
      nameInput.focus();
      return;
    }
    if (!password) {
      showError("Enter a password for the new account.");
      passwordInput.focus();
      return;
    }
    state.addingUser = true;
    const button = $("add-user");
    setBusy(button, true);
    setStatus($("add-user-status"), "Adding…", "busy");
    try {
      const payload = { name: name, role: role, password: password };
      if (displayName) payload.display_name = displayName;
      const data = await api(userPath(), { method: "POST", json: payload });
      clearError();
      setStatus($("add-user-status"), "");
      nameInput.value = "";
      passwordInput.value = "";
      displayInput.value = "";
      toast("Added " + (data.name || name) + " (" + roleLabel(data.role || role).toLowerCase() + ").");
      await loadUsers();
      nameInput.focus();
    } catch (e) {
      setStatus($("add-user-status"), "Not added", "bad");
      showError("The account was not added: " + e.message);
      if (e.status === 422 && /password/i.test(e.message)) passwordInput.focus();
      else if (e.status === 422 && /display name/i.test(e.message)) displayInput.focus();
      else if (e.status === 422) nameInput.focus();
    } finally {
      state.addingUser = false;
      setBusy(button, false);
    }
  }

  async function disableUser(name, button) {
    if (!window.confirm("Disable the account “" + name + "”? It is signed out at once and can no longer sign in; conversations it has claimed go back to the queue.")) return;
    await switchAccount(name, button, "disable", "Disabled " + name + ".", "The account was not disabled: ");
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------
  function wire() {
    $("error-close").addEventListener("click", clearError);
    $("logout").addEventListener("click", logout);
    $("save-channels").addEventListener("click", saveChannels);

    editor = templateEditor($("editor"), $("gutter"), { change: onEditorInput, cursor: updateCursor, save: validateNow });
    $("editor-keys").hidden = !editor.enhanced;
    $("publish").addEventListener("click", publish);
    $("rollout-draft").addEventListener("click", rollout.rollOutDraft);
    $("revert").addEventListener("click", revert);

    for (const lang of ["en", "zh"]) {
      $("preview-tab-" + lang).addEventListener("click", function () {
        selectPreview(lang, false);
      });
      $("preview-tab-" + lang).addEventListener("keydown", function (e) {
        if (e.key === "ArrowLeft" || e.key === "ArrowRight" || e.key === "Home" || e.key === "End") {
          e.preventDefault();
          selectPreview(lang === "en" ? "zh" : "en", true);
        }
      });
    }
    renderPreview(null);
    setText($("preview-note"), "The preview appears when a template is open.");

    $("try-form").addEventListener("submit", runTry);
    $("try-stop").addEventListener("click", stopTry);
    $("try-text").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runTry(e);
    });
    $("try-text").addEventListener("paste", onPaste);
    $("try-images").addEventListener("change", function () {
      const input = $("try-images");
      addImages(input.files);
      input.value = "";
    });
    const drop = $("try-drop");
    drop.addEventListener("dragover", function (e) {
      if (e.dataTransfer && Array.from(e.dataTransfer.types || []).indexOf("Files") !== -1) {
        e.preventDefault();
        drop.classList.add("is-over");
      }
    });
    drop.addEventListener("dragleave", function () {
      drop.classList.remove("is-over");
    });
    drop.addEventListener("drop", function (e) {
      e.preventDefault();
      drop.classList.remove("is-over");
      if (e.dataTransfer) addImages(e.dataTransfer.files);
    });
    $("try").addEventListener("paste", function (e) {
      if (e.target !== $("try-text")) onPaste(e);
    });

    $("reload-history").addEventListener("click", loadVersions);

    $("user-form").addEventListener("submit", addUser);
    $("users-refresh").addEventListener("click", loadUsers);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

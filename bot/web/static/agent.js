/*
 * Snapdesk agent console (/agent).
 *
 * The page is served under a strict Content-Security-Policy (script-src 'self'): no inline
 * scripts, no inline handlers, no eval. Vanilla JS, no build step, no dependencies: an ES module
 * that shares its helpers with the operator console through console-common.js.
 * Everything written by end users, agents or the model is only ever inserted as text nodes.
 * Operators open it read-only (no composer, claim or transfer) to add real turns to regression sets.
 *
 * Data comes from the same-origin console API (/console/api/me, /agent/api/...) and stays live
 * through the /agent/api/events stream (EventSource, "update" events).
 * Debug/test handle: window.SnapdeskAgent = { state(), refresh() }.
 */
import {
  $, el, str, initials, CHANNELS, REASONS, reasonLabel, channelLabel, isNum, confidenceClass, parseTime,
  readJson, apiClient, signOut, showError, clearError, toast, setStatus, setBusy
} from "./console-common.js";

(function () {
  const LOGIN_URL = "/login?next=/agent";
  const TITLE = "Snapdesk · Agent";
  const QUEUE_DEBOUNCE_MS = 200;
  const THREAD_DEBOUNCE_MS = 200;
  const CLOCK_MS = 30000;
  const POLL_WHILE_OFFLINE_MS = 15000;
  const SEARCH_DEBOUNCE_MS = 300;
  const MAX_TEXT = 4000;
  const TOAST_MS = 4000;

  const STATUSES = { waiting: "Waiting", claimed: "Claimed", resolved: "Resolved", bot: "With the bot" };
  const ROLES = { user: "User", bot: "Bot", agent: "Agent", system: "System", note: "Internal note", draft: "Draft" };

  // ---------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------
  /** A CSS class suffix only from a fixed list, never from data. */
  function channelClass(code) {
    return Object.prototype.hasOwnProperty.call(CHANNELS, str(code)) ? "ch-" + code : "ch-other";
  }

  function statusLabel(code) {
    const c = str(code);
    return Object.prototype.hasOwnProperty.call(STATUSES, c) ? STATUSES[c] : c || "Unknown";
  }

  function statusClass(code) {
    return Object.prototype.hasOwnProperty.call(STATUSES, str(code)) ? "st-" + code : "st-other";
  }

  function formatConfidence(c) {
    return isNum(c) ? Math.round(Math.max(0, Math.min(1, c)) * 100) + "%" : "—";
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  function formatClock(d) {
    if (!d) return "";
    try {
      const now = new Date();
      if (sameDay(d, now)) return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
      const opts = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
      if (d.getFullYear() !== now.getFullYear()) opts.year = "numeric";
      return d.toLocaleString(undefined, opts);
    } catch (_) {
      return d.toLocaleString();
    }
  }

  function formatFull(d) {
    if (!d) return "";
    try {
      return d.toLocaleString(undefined, { dateStyle: "full", timeStyle: "short" });
    } catch (_) {
      return d.toLocaleString();
    }
  }

  function formatWaiting(d) {
    if (!d) return "—";
    const min = Math.max(0, Math.floor((Date.now() - d.getTime()) / 60000));
    if (min < 1) return "<1 min";
    if (min < 60) return min + " min";
    const h = Math.floor(min / 60);
    if (h < 24) return h + " h " + (min % 60) + " min";
    const days = Math.floor(h / 24);
    return days + (days === 1 ? " day" : " days");
  }

  function waitingLevel(d) {
    if (!d) return "";
    const min = (Date.now() - d.getTime()) / 60000;
    if (min >= 30) return "late";
    if (min >= 10) return "slow";
    return "";
  }

  /** A same-origin URL from the API (attachments), or null. Images may only come from here. */
  function safeUrl(raw) {
    if (typeof raw !== "string" || !raw) return null;
    try {
      const u = new URL(raw, location.href);
      if (u.origin !== location.origin) return null;
      return u.href;
    } catch (_) {
      return null;
    }
  }

  function httpUrl(raw) {
    try {
      const u = new URL(raw);
      return u.protocol === "http:" || u.protocol === "https:" ? u : null;
    } catch (_) {
      return null;
    }
  }

  /** Text with http(s) links made clickable; every piece is a text node. */
  function fillText(node, text) {
    node.textContent = "";
    const s = str(text);
    const re = /\bhttps?:\/\/[^\s<>"'\u3000-\u303f\uff00-\uffef]+/g;
    let last = 0;
    let m;
    while ((m = re.exec(s))) {
      let href = m[0];
      const trail = /[.,;:!?)\]}>'"]+$/.exec(href);
      if (trail) href = href.slice(0, href.length - trail[0].length);
      const u = httpUrl(href);
      if (!u) continue;
      if (m.index > last) node.appendChild(document.createTextNode(s.slice(last, m.index)));
      node.appendChild(el("a", { href: u.href, target: "_blank", rel: "noopener noreferrer nofollow", text: href }));
      last = m.index + href.length;
      re.lastIndex = last;
    }
    if (last < s.length) node.appendChild(document.createTextNode(s.slice(last)));
  }

  function escapeRegExp(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  /** Plain text with the query's words wrapped in <mark>; text nodes only. */
  function fillHighlighted(node, text, query) {
    node.textContent = "";
    const s = str(text);
    const words = str(query).replace(/["“”]/g, " ").split(/\s+/).filter(function (w) {
      return w && !/^(and|or|not)$/i.test(w);
    });
    if (!words.length) {
      node.textContent = s;
      return;
    }
    const re = new RegExp("(" + words.map(escapeRegExp).sort(function (a, b) { return b.length - a.length; }).join("|") + ")", "gi");
    let last = 0;
    let m;
    while ((m = re.exec(s))) {
      if (!m[0]) {
        re.lastIndex++;
        continue;
      }
      if (m.index > last) node.appendChild(document.createTextNode(s.slice(last, m.index)));
      node.appendChild(el("mark", { text: m[0] }));
      last = m.index + m[0].length;
    }
    if (last < s.length) node.appendChild(document.createTextNode(s.slice(last)));
  }

  /** Run fn at most once per delay; a call while it runs queues exactly one more run. */
  function coalesce(fn, delay) {
    let timer = null;
    let running = false;
    let again = false;
    async function run() {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await fn();
      } catch (_) {
        /* reported by fn */
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule(0);
        }
      }
    }
    function schedule(ms) {
      if (timer !== null) {
        if (ms === 0) {
          clearTimeout(timer);
          timer = null;
        } else {
          return;
        }
      }
      timer = setTimeout(run, ms === undefined ? delay : ms);
    }
    return {
      schedule: schedule,
      now: function () {
        schedule(0);
      }
    };
  }

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------
  const state = {
    me: null,
    csrf: "",
    queue: [],
    waitingCount: null,
    queueLoaded: false,
    currentId: null,
    thread: null,
    threadLoadedFor: null,
    threadError: null,
    live: "connecting",
    leaving: false
  };
  const drafts = new Map(); // conversation id -> {text, suggested, draftKey}
  const queueRows = new Map(); // conversation id -> {li, link, sig}
  const messageNodes = new Map(); // message key -> node (open thread only)
  let pinned = true; // the open thread is scrolled to its newest message
  let focusMessageId = null; // from a search result: scroll to and flash it once loaded
  let knownQueueIds = null;

  // ---------------------------------------------------------------------------------------
  // The API
  // ---------------------------------------------------------------------------------------
  function goLogin() {
    if (state.leaving) return;
    state.leaving = true;
    location.assign(LOGIN_URL);
  }

  const api = apiClient({
    csrf: function () {
      return state.csrf;
    },
    onUnauthorized: goLogin,
    refreshCsrf: loadMe,
    fallback: function (status) {
      if (status === 0) return "Can't reach the server. Check your connection and try again.";
      if (status === 403) return "You are not allowed to do that.";
      if (status === 404) return "That conversation no longer exists.";
      if (status === 409) return "Someone else changed this conversation first.";
      if (status >= 500) return "Something went wrong on the server. Please try again.";
      return "";
    }
  });

  async function loadMe() {
    let res;
    try {
      res = await fetch("/console/api/me", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    } catch (_) {
      return false;
    }
    if (res.status === 401) {
      goLogin();
      return false;
    }
    const me = await readJson(res);
    if (!res.ok || !me) return false;
    state.me = { name: str(me.name), role: str(me.role) };
    state.csrf = str(me.csrf_token);
    // Operators and admins have the operator console too.
    $("console-switch").hidden = state.me.role !== "operator" && state.me.role !== "admin";
    const readOnly = !mayAnswer();
    $("read-only").hidden = !readOnly;
    $("composer-form").hidden = readOnly;
    if (readOnly) closeTransfer(false);
    return true;
  }

  /** Agents and admins take and answer conversations; operators only read them (the server refuses them too). */
  function mayAnswer() {
    return Boolean(state.me) && (state.me.role === "agent" || state.me.role === "admin");
  }

  // ---------------------------------------------------------------------------------------
  // Notices
  // ---------------------------------------------------------------------------------------
  function setLive(mode) {
    state.live = mode;
    const node = $("live");
    node.dataset.state = mode;
    $("live-text").textContent = mode === "live" ? "Live" : mode === "offline" ? "Reconnecting…" : "Connecting…";
    node.title = mode === "live" ? "The queue updates by itself" : "Live updates are interrupted; retrying";
  }

  // ---------------------------------------------------------------------------------------
  // Queue
  // ---------------------------------------------------------------------------------------
  function filters() {
    return { channel: $("filter-channel").value, reason: $("filter-reason").value };
  }

  function queueUrl(f) {
    const p = new URLSearchParams();
    p.set("channel", f.channel || "");
    p.set("reason", f.reason || "");
    return "/agent/api/queue?" + p.toString();
  }

  async function loadQueue() {
    const f = filters();
    const filtered = Boolean(f.channel || f.reason);
    let list;
    let all;
    try {
      const results = await Promise.all([
        api(queueUrl(f)),
        // The title counts everyone waiting, whatever this agent filters on.
        filtered ? api(queueUrl({})) : null
      ]);
      list = Array.isArray(results[0].conversations) ? results[0].conversations : [];
      all = results[1] ? (Array.isArray(results[1].conversations) ? results[1].conversations : []) : list;
    } catch (err) {
      if (!state.queueLoaded) {
        const empty = $("queue-empty");
        empty.textContent = err.message || "The queue could not be loaded.";
        empty.hidden = false;
      }
      if (err.status !== 401 && state.live === "live") showError(err.message);
      throw err;
    }
    const now = filters();
    if (now.channel !== f.channel || now.reason !== f.reason) return; // filters changed meanwhile: a newer load follows
    state.queue = list;
    state.waitingCount = all.filter(function (c) { return c && c.status === "waiting"; }).length;
    renderQueue(announceNewArrivals(all));
    state.queueLoaded = true;
  }

  /** Tell the agent about conversations that just joined the queue; returns their ids. */
  function announceNewArrivals(all) {
    const ids = new Set(all.map(function (c) { return String(c && c.id); }));
    const freshIds = new Set();
    if (knownQueueIds) {
      const fresh = all.filter(function (c) { return c && !knownQueueIds.has(String(c.id)); });
      fresh.forEach(function (c) { freshIds.add(String(c.id)); });
      const waiting = fresh.filter(function (c) { return c.status === "waiting"; });
      if (waiting.length === 1) toast("New conversation waiting: " + (str(waiting[0].user_name) || str(waiting[0].user_id) || "a user"), TOAST_MS);
      else if (waiting.length > 1) toast(waiting.length + " new conversations waiting", TOAST_MS);
    }
    knownQueueIds = ids;
    return freshIds;
  }

  function sortQueue(list) {
    function since(c) {
      const d = parseTime(c.waiting_since);
      return d ? d.getTime() : Number.MAX_SAFE_INTEGER;
    }
    return list.slice().sort(function (a, b) {
      return since(a) - since(b) || Number(a.id) - Number(b.id);
    });
  }

  function queueSignature(c) {
    return JSON.stringify([c.channel, c.user_name, c.user_id, c.status, c.assigned_agent, c.assigned_agent_name, c.reason, c.detail,
      c.confidence, c.waiting_since, c.thumbnail, c.preview]);
  }

  function renderQueue(freshIds) {
    const active = document.activeElement;
    const focusedId = active && active.dataset && active.dataset.testid === "queue-item" ? active.dataset.id : null;

    const items = state.queue.filter(function (c) { return c && c.id !== undefined && c.id !== null; });
    const waiting = sortQueue(items.filter(function (c) { return c.status === "waiting"; }));
    const claimed = sortQueue(items.filter(function (c) { return c.status !== "waiting"; }));
    const seen = new Set();

    function place(listNode, group) {
      group.forEach(function (c, i) {
        const id = String(c.id);
        seen.add(id);
        let row = queueRows.get(id);
        const sig = queueSignature(c);
        if (!row) {
          row = createQueueRow(id);
          queueRows.set(id, row);
          if (freshIds && freshIds.has(id)) row.li.classList.add("is-new");
        }
        if (row.sig !== sig) {
          fillQueueRow(row, c);
          row.sig = sig;
        }
        if (listNode.children[i] !== row.li) listNode.insertBefore(row.li, listNode.children[i] || null);
      });
    }
    place($("list-waiting"), waiting);
    place($("list-claimed"), claimed);
    queueRows.forEach(function (row, id) {
      if (!seen.has(id)) {
        row.li.remove();
        queueRows.delete(id);
      }
    });
    markCurrentRow();

    $("group-waiting-count").textContent = String(waiting.length);
    $("group-claimed-count").textContent = String(claimed.length);
    $("group-waiting").hidden = waiting.length === 0;
    $("group-claimed").hidden = claimed.length === 0;
    const empty = $("queue-empty");
    const f = filters();
    if (!items.length) {
      empty.textContent = f.channel || f.reason ? "No conversations match these filters." : "Nobody is waiting. The bot has it covered.";
      empty.hidden = false;
    } else {
      empty.hidden = true;
    }
    $("queue").setAttribute("aria-busy", "false");

    const n = state.waitingCount || 0;
    document.title = n > 0 ? "(" + n + ") " + TITLE : TITLE;
    const countText = n === 1 ? "1 waiting" : n + " waiting";
    const countNode = $("queue-count");
    if (countNode.textContent !== countText) countNode.textContent = countText;
    countNode.classList.toggle("has-waiting", n > 0);

    if (focusedId && document.activeElement !== active) {
      const row = queueRows.get(focusedId);
      if (row) row.link.focus({ preventScroll: true });
    }
  }

  function createQueueRow(id) {
    const link = el("a", { class: "qrow", href: "#/conversations/" + encodeURIComponent(id), "data-testid": "queue-item", "data-id": id });
    link.addEventListener("click", function (e) {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return; // new tab etc.
      e.preventDefault();
      selectConversation(id, { push: true });
    });
    const li = el("li", { class: "qitem" }, [link]);
    li.addEventListener("animationend", function () {
      li.classList.remove("is-new");
    });
    return { li: li, link: link, sig: null };
  }

  function fillQueueRow(row, c) {
    const link = row.link;
    link.dataset.reason = str(c.reason);
    link.dataset.channel = str(c.channel);
    link.dataset.status = str(c.status);
    link.textContent = "";

    const name = str(c.user_name) || str(c.user_id) || "Unknown user";
    const since = parseTime(c.waiting_since);
    const wait = el("span", { class: "qwait", "data-since": since ? since.toISOString() : "" });
    updateWaitNode(wait);

    const top = el("div", { class: "qline qtop" }, [
      el("span", { class: "ch-badge " + channelClass(c.channel), text: channelLabel(c.channel) }),
      el("span", { class: "qname", text: name, title: str(c.user_id) || null }),
      wait
    ]);
    const reason = el("div", { class: "qline qreason" }, [
      el("span", { class: "reason", text: reasonLabel(c.reason) }),
      el("span", { class: confidenceClass(c.confidence), title: "Bot confidence" }, [
        el("span", { class: "sr-only", text: "bot confidence " }), document.createTextNode(formatConfidence(c.confidence))
      ])
    ]);
    const main = el("div", { class: "qmain" }, [top, reason]);
    if (str(c.preview)) main.appendChild(el("div", { class: "qpreview", text: str(c.preview) }));
    if (c.status === "claimed" || c.assigned_agent) {
      const mine = state.me && c.assigned_agent === state.me.name;
      main.appendChild(el("div", { class: "qclaim" + (mine ? " is-mine" : "") }, [
        el("span", { class: "qclaim-dot", "aria-hidden": "true" }),
        document.createTextNode(c.assigned_agent ? (mine ? "Claimed by you" : "Claimed by " + (str(c.assigned_agent_name) || str(c.assigned_agent))) : "Claimed")
      ]));
    }
    link.appendChild(main);
    const thumb = safeUrl(c.thumbnail);
    if (thumb) {
      const img = el("img", { class: "qthumb", alt: "", loading: "lazy", decoding: "async", src: thumb });
      img.addEventListener("error", function () {
        img.replaceWith(el("span", { class: "qthumb qthumb-missing", "aria-hidden": "true", text: "🖼" }));
      });
      link.appendChild(el("span", { class: "sr-only", text: ", with a screenshot" }));
      link.appendChild(img);
    }
  }

  function updateWaitNode(node) {
    const d = parseTime(node.dataset.since);
    const text = formatWaiting(d);
    if (node.textContent !== text) node.textContent = text;
    node.title = d ? "Waiting since " + formatFull(d) : "";
    node.classList.toggle("slow", waitingLevel(d) === "slow");
    node.classList.toggle("late", waitingLevel(d) === "late");
  }

  function tickClocks() {
    document.querySelectorAll(".qwait").forEach(updateWaitNode);
  }

  function markCurrentRow() {
    queueRows.forEach(function (row, id) {
      if (id === state.currentId) row.link.setAttribute("aria-current", "true");
      else row.link.removeAttribute("aria-current");
    });
  }

  const queueRefresher = coalesce(loadQueue, QUEUE_DEBOUNCE_MS);

  // ---------------------------------------------------------------------------------------
  // Thread
  // ---------------------------------------------------------------------------------------
  function idFromHash() {
    const m = /^#\/conversations\/([^/?#]+)$/.exec(location.hash || "");
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (_) {
      return null;
    }
  }

  function selectConversation(id, opts) {
    const options = opts || {};
    const key = id === null || id === undefined ? null : String(id);
    if (options.push) {
      const hash = key ? "#/conversations/" + encodeURIComponent(key) : "";
      if (location.hash !== hash) history.pushState(null, "", hash || location.pathname + location.search);
    }
    if (key === state.currentId) {
      if (key) threadRefresher.now();
      if (options.focus) focusThreadHeading();
      return;
    }
    saveDraft();
    state.currentId = key;
    state.thread = null;
    state.threadLoadedFor = null;
    messageNodes.clear();
    pinned = true;
    $("messages").textContent = "";
    $("new-messages").hidden = true;
    markCurrentRow();
    clearError();
    document.body.classList.toggle("has-thread", Boolean(key));
    if (!key) {
      $("thread").hidden = true;
      $("placeholder").hidden = false;
      return;
    }
    $("placeholder").hidden = true;
    const thread = $("thread");
    thread.hidden = false;
    thread.dataset.id = key;
    thread.setAttribute("aria-busy", "true");
    // Show what the queue already knows while the thread loads.
    const known = state.queue.find(function (c) { return String(c.id) === key; });
    $("thread-user").textContent = known ? str(known.user_name) || str(known.user_id) : "Loading…";
    $("messages").appendChild(el("p", { class: "loading", text: "Loading the conversation…" }));
    $("escalation").hidden = true;
    $("claim").hidden = true;
    $("transfer").hidden = true;
    closeTransfer(false);
    restoreDraft(key, null);
    updateComposerState();
    threadRefresher.now();
    if (options.focus || isNarrow()) focusThreadHeading();
  }

  function focusThreadHeading() {
    requestAnimationFrame(function () {
      $("thread-user").focus({ preventScroll: true });
    });
  }

  function isNarrow() {
    return window.matchMedia("(max-width: 820px)").matches;
  }

  async function loadThread() {
    const id = state.currentId;
    if (!id) return;
    let data;
    try {
      data = await api("/agent/api/conversations/" + encodeURIComponent(id));
    } catch (err) {
      if (id !== state.currentId) return;
      if (err.status === 404) {
        renderThreadMissing(id);
        return;
      }
      if (err.status !== 401) {
        if (state.threadLoadedFor !== id) {
          const msgs = $("messages");
          msgs.textContent = "";
          msgs.appendChild(el("p", { class: "loading", text: err.message }));
        }
        showError(err.message);
      }
      throw err;
    }
    if (id !== state.currentId) return; // another conversation was opened meanwhile
    renderThread(data);
  }

  const threadRefresher = coalesce(loadThread, THREAD_DEBOUNCE_MS);

  function renderThreadMissing(id) {
    state.thread = null;
    state.threadLoadedFor = id;
    messageNodes.clear();
    $("thread").setAttribute("aria-busy", "false");
    $("thread-user").textContent = "Conversation not found";
    $("thread-channel").hidden = true;
    $("thread-status").hidden = true;
    $("thread-assignee").textContent = "";
    $("thread-extra").textContent = "";
    $("escalation").hidden = true;
    $("claim").hidden = true;
    $("transfer").hidden = true;
    closeTransfer(false);
    const msgs = $("messages");
    msgs.textContent = "";
    msgs.appendChild(el("p", { class: "loading", text: "This conversation does not exist or was removed." }));
    updateComposerState();
  }

  function renderThread(t) {
    const id = String(t.id !== undefined && t.id !== null ? t.id : state.currentId);
    const first = state.threadLoadedFor !== state.currentId;
    state.thread = t;
    state.threadLoadedFor = state.currentId;
    const thread = $("thread");
    thread.dataset.id = id;
    thread.dataset.status = str(t.status);
    thread.setAttribute("aria-busy", "false");

    // Header
    const name = str(t.user_name) || str(t.user_id) || "Unknown user";
    $("thread-user").textContent = name;
    const ch = $("thread-channel");
    ch.hidden = false;
    ch.className = "ch-badge " + channelClass(t.channel);
    ch.textContent = channelLabel(t.channel);
    const st = $("thread-status");
    st.hidden = false;
    st.className = "status-pill " + statusClass(t.status);
    st.dataset.status = str(t.status);
    st.textContent = statusLabel(t.status);
    const mine = state.me && t.assigned_agent && t.assigned_agent === state.me.name;
    const assignee = $("thread-assignee");
    assignee.textContent = t.assigned_agent
      ? "Assigned to " + (str(t.assigned_agent_name) || str(t.assigned_agent)) + (mine ? " (you)" : "")
      : "Unassigned";
    assignee.title = t.assigned_agent ? "Signs in as " + str(t.assigned_agent) : "";
    assignee.dataset.agent = str(t.assigned_agent);
    assignee.classList.toggle("is-mine", Boolean(mine));
    const extra = [];
    if (str(t.user_id) && str(t.user_id) !== name) extra.push("ID " + str(t.user_id));
    if (str(t.language)) extra.push(str(t.language).toUpperCase());
    $("thread-extra").textContent = extra.join(" · ");

    $("claim").hidden = !mayAnswer() || t.status !== "waiting";
    if (t.status !== "waiting" && document.activeElement === $("claim")) $("composer").focus();
    const transferable = mayAnswer() && (t.status === "waiting" || t.status === "claimed");
    $("transfer").hidden = !transferable;
    if (!transferable) closeTransfer(false);

    // Escalation
    const esc = t.escalation && typeof t.escalation === "object" ? t.escalation : null;
    const escBox = $("escalation");
    if (esc) {
      escBox.hidden = false;
      escBox.dataset.reason = str(esc.reason);
      $("esc-reason").textContent = reasonLabel(esc.reason);
      $("esc-detail").textContent = str(esc.detail);
      $("esc-detail").hidden = !str(esc.detail);
      const conf = $("esc-conf");
      conf.className = confidenceClass(esc.confidence);
      conf.textContent = formatConfidence(esc.confidence);
      const when = parseTime(esc.created_at);
      $("esc-when").textContent = when ? "· handed over " + formatClock(when) : "";
      $("esc-when").title = when ? formatFull(when) : "";
      $("esc-shot-text").textContent = str(esc.screenshot_summary);
      $("esc-shot").hidden = !str(esc.screenshot_summary);
    } else {
      escBox.hidden = true;
    }

    renderMessages(Array.isArray(t.messages) ? t.messages : [], first);
    restoreDraft(state.currentId, t);
    updateComposerState();
  }

  function messageKey(m, i) {
    return m.id !== null && m.id !== undefined ? "id:" + m.id : "i:" + i + ":" + str(m.created_at);
  }

  function nearBottom(node) {
    return node.scrollHeight - node.scrollTop - node.clientHeight < 80;
  }

  function renderMessages(list, first) {
    const box = $("messages");
    const wasAtBottom = first || pinned || nearBottom(box);
    const loading = box.querySelector(".loading");
    if (loading) loading.remove();
    const seen = new Set();
    let added = 0;
    let prev = null;
    list.forEach(function (m, i) {
      if (!m || typeof m !== "object") return;
      const key = messageKey(m, i);
      seen.add(key);
      let node = messageNodes.get(key);
      const sig = JSON.stringify([m.text, m.images, m.screenshots, m.knowledge, m.author, m.author_name, m.confidence, m.role, m.kind, m.delivered,
        m.withheld, m.status_change, m.prompt_tokens, m.image_tokens, m.completion_tokens, m.latency_ms]);
      if (node && node.dataset.sig !== sig) {
        const fresh = renderMessage(m);
        fresh.dataset.sig = sig;
        node.replaceWith(fresh);
        node = fresh;
        messageNodes.set(key, node);
      }
      if (!node) {
        node = renderMessage(m);
        node.dataset.sig = sig;
        messageNodes.set(key, node);
        if (!first) {
          node.classList.add("is-new");
          node.addEventListener("animationend", function () { this.classList.remove("is-new"); }, { once: true });
          added++;
        }
      }
      const expected = prev ? prev.nextSibling : box.firstChild;
      if (expected !== node) box.insertBefore(node, expected);
      prev = node;
    });
    messageNodes.forEach(function (node, key) {
      if (!seen.has(key)) {
        node.remove();
        messageNodes.delete(key);
      }
    });
    if (!list.length && !box.querySelector(".loading")) {
      box.appendChild(el("p", { class: "loading", text: "No messages yet." }));
    }

    if (focusMessageId !== null) {
      const target = messageNodes.get("id:" + focusMessageId);
      focusMessageId = null;
      if (target) {
        pinned = false;
        target.scrollIntoView({ block: "center" });
        target.classList.add("is-found");
        setTimeout(function () { target.classList.remove("is-found"); }, 2600);
        return;
      }
    }
    if (wasAtBottom) {
      box.scrollTop = box.scrollHeight;
      pinned = true;
      $("new-messages").hidden = true;
    } else if (added) {
      $("new-messages").hidden = false;
    }
  }

  function groupNumber(n) {
    try {
      return Math.round(n).toLocaleString("en-US");
    } catch (_) {
      return String(Math.round(n));
    }
  }

  /** "conf 0.82 · 1,234 prompt tok (1,180 image) · 41 out · 2.3 s", from whichever figures exist. */
  function turnFigures(m) {
    const parts = [];
    const full = [];
    if (isNum(m.confidence)) {
      parts.push("conf " + m.confidence.toFixed(2));
      full.push("confidence " + m.confidence.toFixed(3));
    }
    if (isNum(m.prompt_tokens)) {
      const image = isNum(m.image_tokens) && m.image_tokens > 0 ? " (" + groupNumber(m.image_tokens) + " image)" : "";
      parts.push(groupNumber(m.prompt_tokens) + " prompt tok" + image);
      full.push(groupNumber(m.prompt_tokens) + " prompt tokens" + (image ? ", " + groupNumber(m.image_tokens) + " of them for screenshots" : ""));
    } else if (isNum(m.image_tokens) && m.image_tokens > 0) {
      parts.push(groupNumber(m.image_tokens) + " image tok");
      full.push(groupNumber(m.image_tokens) + " image tokens");
    }
    if (isNum(m.completion_tokens)) {
      parts.push(groupNumber(m.completion_tokens) + " out");
      full.push(groupNumber(m.completion_tokens) + " tokens written");
    }
    if (isNum(m.latency_ms)) {
      const sec = m.latency_ms / 1000;
      parts.push(sec < 10 ? sec.toFixed(1) + " s" : Math.round(sec) + " s");
      full.push("answered in " + groupNumber(m.latency_ms) + " ms");
    }
    if (!parts.length) return null;
    return el("div", { class: "msg-figures", "data-testid": "turn-figures", title: full.join(" · ") }, [
      el("span", { class: "sr-only", text: "Figures for this turn: " }), document.createTextNode(parts.join(" · "))
    ]);
  }

  const STATUS_LINE_TEXT = {
    claimed: function (m) { return (str(m.author_name) || str(m.author) || "An agent") + " joined the conversation."; },
    bot: function () { return "Back with the assistant."; },
    resolved: function () { return "Marked as resolved."; },
    waiting: function () { return "Waiting for a person."; }
  };

  /** A change of owner as a centered line in the thread. */
  function renderStatusLine(m) {
    const change = str(m.status_change);
    const node = el("div", {
      class: "msg status-line side-center", "data-testid": "thread-message", "data-role": str(m.role) || "system",
      "data-kind": "status", "data-status": change, "data-id": m.id === null || m.id === undefined ? "" : String(m.id)
    });
    const when = parseTime(m.created_at);
    const text = el("span", { class: "status-line-text", "data-testid": "thread-message-text" });
    text.textContent = str(m.text) || (Object.prototype.hasOwnProperty.call(STATUS_LINE_TEXT, change) ? STATUS_LINE_TEXT[change](m) : "");
    const line = el("div", { class: "status-line-row" + (Object.prototype.hasOwnProperty.call(STATUS_LINE_TEXT, change) ? " sl-" + change : "") }, [text]);
    if (when) line.appendChild(el("time", { class: "msg-time", datetime: when.toISOString(), title: formatFull(when), text: formatClock(when) }));
    if (str(m.author) && str(m.author) !== str(m.author_name)) line.title = "Agent sign-in: " + str(m.author);
    node.appendChild(line);
    return node;
  }

  // What the reading of a screenshot found, one chip style per kind (class names from this list only).
  const EVIDENCE_CHIPS = [
    ["error_codes", "ev-error", "Error code"], ["amounts", "ev-amount", "Amount"], ["orders", "ev-order", "Order number"],
    ["tracking", "ev-tracking", "Tracking number"], ["dates", "ev-date", "Date"]
  ];

  const HIDDEN_KINDS = { card: "card", iban: "IBAN", email: "email", phone: "phone", code: "one-time code" };

  /** "card •••• 1881, email": what was painted out of a screenshot before anyone saw it. */
  function hiddenData(redacted) {
    const seen = [];
    (Array.isArray(redacted) ? redacted : []).forEach(function (r) {
      if (!r || typeof r !== "object") return;
      const kind = Object.prototype.hasOwnProperty.call(HIDDEN_KINDS, str(r.kind)) ? HIDDEN_KINDS[str(r.kind)] : str(r.kind) || "data";
      const item = str(r.last4) ? kind + " •••• " + str(r.last4) : kind;
      if (seen.indexOf(item) < 0) seen.push(item);
    });
    return seen.join(", ");
  }

  /** What Snapdesk read in one screenshot, beside it; null when it was not read (OCR off or failed). */
  function screenshotEvidence(reading) {
    if (reading && reading.read !== true && reading.failed === true) {
      // OCR was on but could not read it in time: nothing was checked or painted out.
      return el("figcaption", { class: "shot-evidence is-unreadable", "data-testid": "screenshot-evidence" }, [
        el("p", { class: "ev-unreadable", "data-testid": "evidence-not-read",
                  text: "Not read: personal data in it was not checked" }),
      ]);
    }
    if (!reading || reading.read !== true) return null;
    const box = el("figcaption", { class: "shot-evidence", "data-testid": "screenshot-evidence" });
    if (reading.unreadable === true) {
      box.classList.add("is-unreadable");
      box.appendChild(el("p", { class: "ev-unreadable", "data-testid": "evidence-unreadable", text: "Could not be read" }));
    }
    const evidence = reading.evidence && typeof reading.evidence === "object" ? reading.evidence : {};
    if (str(evidence.title)) box.appendChild(el("p", { class: "ev-title", "data-testid": "evidence-title", text: str(evidence.title) }));
    if (str(reading.summary)) box.appendChild(el("p", { class: "ev-summary", "data-testid": "evidence-summary", text: str(reading.summary) }));
    const chips = el("ul", { class: "ev-chips", "aria-label": "Found in the screenshot" });
    EVIDENCE_CHIPS.forEach(function (kind) {
      (Array.isArray(evidence[kind[0]]) ? evidence[kind[0]] : []).forEach(function (value) {
        if (!str(value)) return;
        chips.appendChild(el("li", { class: "ev-chip " + kind[1], "data-testid": "evidence-chip", "data-kind": kind[0], title: kind[2] }, [
          el("span", { class: "sr-only", text: kind[2] + ": " }), str(value)
        ]));
      });
    });
    if (chips.childNodes.length) box.appendChild(chips);
    const hidden = hiddenData(reading.redacted);
    if (hidden) {
      box.appendChild(el("p", {
        class: "ev-redacted", "data-testid": "evidence-redacted",
        title: "Painted out of the image before it was stored; the full values were never kept",
        text: "Personal data hidden: " + hidden
      }));
    }
    const text = str(reading.text);
    if (text) {
      const lines = text.split("\n").length;
      box.appendChild(el("details", { class: "ev-text" }, [
        el("summary", { text: "Text read from the screenshot (" + lines + (lines === 1 ? " line)" : " lines)") }),
        el("div", { class: "ev-text-body", "data-testid": "evidence-text", tabindex: "0", text: text })
      ]));
    }
    return box.childNodes.length ? box : null;
  }

  function renderMessage(m) {
    const role = str(m.role) || "system";
    const kind = str(m.kind) || role;
    if (kind === "status") return renderStatusLine(m);
    const thread = state.thread || {};
    const userName = str(thread.user_name) || str(thread.user_id) || "User";
    let side = "left";
    let cls = "from-" + (Object.prototype.hasOwnProperty.call(ROLES, role) ? role : "system");
    if (role === "bot" || role === "agent" || role === "draft") side = "right";
    if (role === "system") side = "center";
    if (role === "note" || kind === "note") {
      side = "wide";
      cls = "from-note";
    }
    if (kind === "handover") cls += " is-handover";
    if (m.withheld === true) cls += " is-withheld";

    const node = el("div", {
      class: "msg " + cls + " side-" + side, "data-testid": "thread-message",
      "data-role": role, "data-kind": kind, "data-id": m.id === null || m.id === undefined ? "" : String(m.id)
    });
    const when = parseTime(m.created_at);

    const head = el("div", { class: "msg-head" });
    if (role === "note" || kind === "note") {
      head.appendChild(el("span", { class: "note-tag", text: "Internal note" }));
      if (str(m.author)) head.appendChild(el("span", { class: "msg-author", text: str(m.author) }));
    } else if (role === "user") {
      head.appendChild(el("span", { class: "msg-author", text: str(m.author) || userName }));
    } else if (role === "bot" || role === "draft") {
      head.appendChild(el("span", { class: "msg-author", text: kind === "handover" ? "Bot · hand-over notice" : role === "draft" ? "Assistant's draft" : "Bot" }));
      if (role === "draft" || m.withheld === true) {
        head.appendChild(el("span", {
          class: "draft-tag", "data-testid": "not-sent",
          title: "The assistant wrote this after a person took over; the user never saw it", text: "Not sent — draft"
        }));
      }
      // Its confidence is the first of the turn's figures, under the bubble.
    } else if (role === "agent") {
      const shown = str(m.author_name) || str(m.author) || "Agent";
      head.appendChild(el("span", {
        class: "msg-author", "data-testid": "agent-name", text: shown,
        title: str(m.author) ? "Signs in as " + str(m.author) : null
      }));
      head.appendChild(el("span", { class: "role-tag", text: "Agent" }));
    }
    if (when) head.appendChild(el("time", { class: "msg-time", datetime: when.toISOString(), title: formatFull(when), text: formatClock(when) }));
    const undelivered = m.delivered === false && m.withheld !== true && role !== "draft" ? el("span", {
      class: "undelivered-tag", "data-testid": "undelivered",
      title: "The user's chat did not accept this yet; Snapdesk keeps sending it", text: "Not delivered yet"
    }) : null;
    if (undelivered) head.appendChild(undelivered);
    if (role === "user" && m.id !== null && m.id !== undefined && mayAddCases()) head.appendChild(addCaseButton(m));

    const text = el("div", { class: "msg-text", "data-testid": "thread-message-text" });
    fillText(text, m.text);

    const body = el("div", { class: "bubble" }, [text]);
    const images = Array.isArray(m.images) ? m.images : [];
    const shots = Array.isArray(m.screenshots) ? m.screenshots : [];
    const shown = images.map(function (raw, i) {
      return { url: safeUrl(raw), reading: shots[i] && typeof shots[i] === "object" ? shots[i] : null };
    }).filter(function (s) { return s.url; });
    const urls = shown.map(function (s) { return s.url; });
    if (urls.length) {
      const who = role === "user" ? str(m.author) || userName : ROLES[role] || role;
      const imgs = el("div", { class: "msg-images" + (urls.length > 1 ? " many" : "") });
      shown.forEach(function (s, i) {
        const label = "Open screenshot " + (i + 1) + " of " + urls.length + " from " + who;
        const img = el("img", { alt: "", src: s.url, loading: "lazy", decoding: "async" });
        const btn = el("button", { type: "button", class: "thumb", "aria-label": label, title: "Enlarge", "data-testid": "thread-image" }, [img]);
        img.addEventListener("error", function () {
          btn.classList.add("is-missing");
          btn.appendChild(el("span", { class: "thumb-missing", text: "Image unavailable" }));
        });
        btn.addEventListener("click", function () {
          openOverlay(urls, i, who, when, btn);
        });
        const evidence = screenshotEvidence(s.reading);
        imgs.appendChild(evidence ? el("figure", { class: "shot", "data-testid": "screenshot" }, [btn, evidence]) : btn);
      });
      body.appendChild(imgs);
    }

    if (role === "system") {
      node.appendChild(body);
      if (when) body.title = formatFull(when);
      if (undelivered) node.appendChild(undelivered); // system notices have no header line
    } else {
      node.appendChild(head);
      node.appendChild(body);
    }
    if (role === "bot" || role === "draft" || kind === "handover") {
      const figures = turnFigures(m);
      if (figures) node.appendChild(figures);
      const used = turnKnowledge(m.knowledge);
      if (used) node.appendChild(used);
    }
    return node;
  }

  /** The help-centre passages a bot turn was given, its score each, and which the answer cited. */
  function turnKnowledge(k) {
    if (!k || typeof k !== "object" || !Array.isArray(k.retrieved) || !k.retrieved.length) return null;
    const cited = Array.isArray(k.cited) ? k.cited.map(Number) : [];
    const list = el("ol", { class: "kb-used-list" });
    k.retrieved.forEach(function (p) {
      if (!p || typeof p !== "object") return;
      const isCited = cited.indexOf(Number(p.n)) >= 0;
      const item = el("li", { class: isCited ? "is-cited" : "", "data-testid": "turn-passage" }, [
        el("span", { class: "kb-n", text: "[" + String(Number(p.n) || "") + "]" }),
        " " + str(p.section || p.title),
        el("span", { class: "kb-score", text: isNum(p.score) ? " · score " + p.score.toFixed(1) : "" }),
        isCited ? el("span", { class: "kb-cited", text: " · cited" }) : null,
      ]);
      list.appendChild(item);
    });
    const box = el("details", { class: "kb-used", "data-testid": "turn-knowledge" }, [
      el("summary", { text: "Help centre: " + k.retrieved.length + " passage" + (k.retrieved.length === 1 ? "" : "s") +
        " given, " + cited.length + " cited" }),
      list,
    ]);
    return box;
  }

  // ---------------------------------------------------------------------------------------
  // Composer
  // ---------------------------------------------------------------------------------------
  /**
   * What the assistant suggests for the reply box: its newest unsent draft (written after a
   * person took over) unless an agent has answered since, or else the draft answer it made
   * when it handed over, unless an agent has answered since the hand-over.
   */
  function draftOf(t) {
    if (!t || !(t.status === "waiting" || t.status === "claimed")) return null;
    const list = Array.isArray(t.messages) ? t.messages : [];
    let lastDraft = -1;
    let lastAgent = -1;
    list.forEach(function (m, i) {
      if (!m) return;
      if (m.role === "draft" || m.kind === "draft") lastDraft = i;
      if (m.role === "agent") lastAgent = i;
    });
    if (lastDraft >= 0 && lastDraft > lastAgent) {
      const m = list[lastDraft];
      const text = str(m.text).trim();
      if (text) {
        return { text: text, confidence: m.confidence, source: "draft", key: "m:" + str(m.id) + "|" + text.length, at: m.created_at };
      }
    }
    if (!t.escalation || typeof t.escalation !== "object") return null;
    const text = str(t.escalation.draft_answer).trim();
    if (!text || agentAnsweredSince(t)) return null;
    return {
      text: text, confidence: t.escalation.confidence, source: "handover",
      key: "e:" + str(t.escalation.created_at) + "|" + text.length, at: t.escalation.created_at
    };
  }

  function agentAnsweredSince(t) {
    const list = Array.isArray(t.messages) ? t.messages : [];
    let handover = -1;
    list.forEach(function (m, i) {
      if (m && m.kind === "handover") handover = i;
    });
    if (handover >= 0) {
      return list.slice(handover + 1).some(function (m) { return m && m.role === "agent"; });
    }
    const since = parseTime(t.escalation.created_at);
    return list.some(function (m) {
      if (!m || m.role !== "agent") return false;
      const at = parseTime(m.created_at);
      return !since || !at || at >= since;
    });
  }

  function saveDraft() {
    if (!state.currentId) return;
    const entry = drafts.get(state.currentId) || { text: "", suggested: false, draftKey: null, dismissed: null };
    entry.text = $("composer").value;
    if (!entry.text.trim()) entry.suggested = false;
    drafts.set(state.currentId, entry);
  }

  /** The agent's own unsent text for a conversation; the assistant's draft is only offered, never filled in. */
  function restoreDraft(id, t) {
    const composer = $("composer");
    let entry = drafts.get(id);
    if (!entry) {
      entry = { text: "", suggested: false, draftKey: null, dismissed: null };
      drafts.set(id, entry);
      composer.value = "";
    } else if (!t) {
      composer.value = entry.text;
    }
    updateSuggestion();
  }

  /** The suggestion card above the reply box, and the mark on text that came from it. */
  function updateSuggestion() {
    const id = state.currentId;
    const entry = id ? drafts.get(id) : null;
    const composer = $("composer");
    const has = composer.value.trim().length > 0;
    if (entry && !has) entry.suggested = false;
    const suggested = Boolean(entry && entry.suggested && has);
    $("suggested-label").hidden = !suggested;
    composer.classList.toggle("is-suggested", suggested);

    const loaded = state.thread && state.threadLoadedFor === id;
    const draft = loaded ? draftOf(state.thread) : null;
    const card = $("suggestion");
    const show = Boolean(draft && entry && entry.dismissed !== draft.key && composer.value.trim() !== draft.text);
    card.hidden = !show;
    if (!show) return;
    card.dataset.source = draft.source;
    card.dataset.key = draft.key;
    const text = $("suggestion-text");
    if (text.dataset.key !== draft.key) {
      fillText(text, draft.text);
      text.dataset.key = draft.key;
    }
    const conf = $("suggestion-conf");
    conf.className = confidenceClass(draft.confidence);
    conf.textContent = isNum(draft.confidence) ? "conf " + draft.confidence.toFixed(2) : "conf —";
    const when = parseTime(draft.at);
    $("suggestion-source").textContent = (draft.source === "draft" ? "written after the hand-over" : "from the hand-over") +
      (when ? " · " + formatClock(when) : "");
  }

  function useDraft() {
    const draft = state.thread ? draftOf(state.thread) : null;
    if (!draft || !state.currentId) return;
    const composer = $("composer");
    const current = composer.value.trim();
    if (current && current !== draft.text && !window.confirm("Replace what you have written with the assistant's draft?")) return;
    composer.value = draft.text;
    const entry = drafts.get(state.currentId) || { text: "", suggested: false, draftKey: null, dismissed: null };
    entry.text = draft.text;
    entry.suggested = true;
    entry.draftKey = draft.key;
    drafts.set(state.currentId, entry);
    updateSuggestion();
    updateComposerState();
    autosize(true);
    composer.focus();
    composer.setSelectionRange(composer.value.length, composer.value.length);
  }

  function dismissDraft() {
    const draft = state.thread ? draftOf(state.thread) : null;
    if (!draft || !state.currentId) return;
    const entry = drafts.get(state.currentId) || { text: "", suggested: false, draftKey: null, dismissed: null };
    entry.dismissed = draft.key;
    drafts.set(state.currentId, entry);
    updateSuggestion();
    $("composer").focus();
  }

  const busy = { action: null };

  function updateComposerState() {
    const t = state.thread;
    const loaded = Boolean(t) && state.threadLoadedFor === state.currentId;
    const text = $("composer").value.trim();
    const working = busy.action !== null;
    const tooLong = text.length > MAX_TEXT;
    $("send-reply").disabled = !loaded || working || !text || tooLong;
    $("add-note").disabled = !loaded || working || !text || tooLong;
    $("resolve").disabled = !loaded || working || t.status === "resolved";
    // Only a conversation a person owns can go back to the bot.
    $("hand-back").disabled = !loaded || working || !(t.status === "waiting" || t.status === "claimed");
    $("claim").disabled = !loaded || working;
    $("composer").disabled = !state.currentId;
    const hint = $("composer-hint");
    let hintText = "";
    if (loaded && t.status === "claimed" && t.assigned_agent && state.me && t.assigned_agent !== state.me.name) {
      hintText = (str(t.assigned_agent_name) || str(t.assigned_agent)) + " is handling this conversation: only they can reply, resolve or hand it back.";
    } else if (loaded && t.status === "waiting") {
      hintText = "Sending a reply claims the conversation.";
    } else if (loaded && t.status === "resolved") {
      hintText = "This conversation is resolved.";
    } else if (loaded && t.status === "bot") {
      hintText = "The bot is answering this conversation.";
    }
    if (tooLong) hintText = "The message is too long (" + text.length + " / " + MAX_TEXT + " characters).";
    hint.textContent = hintText;
    hint.classList.toggle("is-warning", tooLong);
    const name = t ? str(t.user_name) || str(t.user_id) : "";
    $("composer-label").textContent = name ? "Reply to " + name : "Reply";
    autosize();
  }

  let autosized = null;

  /** Grow the composer with its text (up to 40% of the window); leave it alone while the text is unchanged. */
  function autosize(force) {
    const c = $("composer");
    if (c.offsetParent === null) return; // not on screen: measure when it is
    if (!force && c.value === autosized) return;
    autosized = c.value;
    c.style.height = "auto";
    const max = Math.max(120, Math.round(window.innerHeight * 0.4));
    c.style.height = Math.min(max, c.scrollHeight + 2) + "px";
  }

  async function act(action, fn, labelButton) {
    if (busy.action !== null || !state.currentId) return;
    const id = state.currentId;
    busy.action = action;
    const button = labelButton || null;
    if (button) button.setAttribute("aria-busy", "true");
    updateComposerState();
    clearError();
    try {
      await fn(id);
    } catch (err) {
      if (err && err.status !== 401) {
        if (action === "claim" && err.status === 409) showError("Already claimed by someone else");
        else if (err.status === 409) showError(err.message || "Someone else changed this conversation first.");
        else showError(err && err.message ? err.message : "That did not work. Please try again.");
        if (err.status === 409 || err.status === 404) {
          queueRefresher.now();
          if (id === state.currentId) threadRefresher.now();
        }
      }
    } finally {
      busy.action = null;
      if (button) button.removeAttribute("aria-busy");
      updateComposerState();
    }
  }

  function post(id, verb, body) {
    return api("/agent/api/conversations/" + encodeURIComponent(id) + "/" + verb, { method: "POST", json: body || {} });
  }

  function sendText(kind) {
    const composer = $("composer");
    const text = composer.value.trim();
    if (!text) {
      composer.focus();
      return;
    }
    if (text.length > MAX_TEXT) return;
    const button = kind === "reply" ? $("send-reply") : $("add-note");
    act(kind, async function (id) {
      await post(id, kind === "reply" ? "reply" : "note", { text: text });
      // Clear only what was sent: the agent may have typed on meanwhile in another conversation.
      const entry = drafts.get(id);
      if (id === state.currentId) {
        if (composer.value.trim() === text) composer.value = "";
        updateSuggestion();
      }
      if (entry) {
        entry.text = id === state.currentId ? composer.value : "";
        entry.suggested = false;
      }
      toast(kind === "reply" ? "Reply sent" : "Internal note added", TOAST_MS);
      if (id === state.currentId) {
        composer.focus();
        threadRefresher.now();
      }
      queueRefresher.now();
    }, button);
  }

  /** Claim, resolve or hand back (the button's id is the verb): say so, then refresh what shows it. */
  function changeOwner(verb, done, focus) {
    act(verb, async function (id) {
      await post(id, verb);
      toast(done, TOAST_MS);
      if (id === state.currentId) {
        focus();
        threadRefresher.now();
      }
      queueRefresher.now();
    }, $(verb));
  }

  function claim() {
    changeOwner("claim", "You claimed this conversation", function () {
      $("composer").focus();
    });
  }

  function resolve() {
    changeOwner("resolve", "Conversation resolved", focusThreadHeading);
  }

  function handBack() {
    changeOwner("hand-back", "Handed back to the bot", focusThreadHeading);
  }

  // ---------------------------------------------------------------------------------------
  // Transfer to another agent
  // ---------------------------------------------------------------------------------------
  let agentsCache = null;

  async function loadAgents() {
    const data = await api("/agent/api/agents");
    agentsCache = Array.isArray(data.agents) ? data.agents.filter(function (a) { return a && str(a.name); }) : [];
    return agentsCache;
  }

  async function openTransfer() {
    const panel = $("transfer-panel");
    const select = $("transfer-agent");
    panel.hidden = false;
    $("transfer").setAttribute("aria-expanded", "true");
    select.textContent = "";
    select.appendChild(el("option", { value: "", text: "Loading agents…" }));
    select.disabled = true;
    $("transfer-confirm").disabled = true;
    let agents;
    try {
      agents = await loadAgents();
    } catch (err) {
      if (err.status !== 401) showError(err.message || "The agents could not be loaded.");
      closeTransfer(false);
      return;
    }
    if (panel.hidden) return;
    const t = state.thread || {};
    const others = agents.filter(function (a) { return str(a.name) !== str(t.assigned_agent); });
    select.textContent = "";
    if (!others.length) {
      select.appendChild(el("option", { value: "", text: "No other agent can take it" }));
    } else {
      select.appendChild(el("option", { value: "", text: "Choose an agent…" }));
      others.forEach(function (a) {
        const shown = str(a.display_name) || str(a.name);
        const me = state.me && str(a.name) === state.me.name;
        select.appendChild(el("option", {
          value: str(a.name), text: shown + (shown !== str(a.name) ? " (" + str(a.name) + ")" : "") + (me ? " — you" : "")
        }));
      });
    }
    select.disabled = !others.length;
    const sync = function () {
      $("transfer-confirm").disabled = !select.value || busy.action !== null;
    };
    select.onchange = sync;
    sync();
    select.focus();
  }

  function closeTransfer(refocus) {
    const panel = $("transfer-panel");
    if (panel.hidden) return;
    panel.hidden = true;
    $("transfer").setAttribute("aria-expanded", "false");
    if (refocus && !$("transfer").hidden) $("transfer").focus();
  }

  function transfer() {
    const select = $("transfer-agent");
    const agent = select.value;
    if (!agent) return;
    const chosen = (agentsCache || []).find(function (a) { return str(a.name) === agent; });
    const shown = chosen ? str(chosen.display_name) || agent : agent;
    act("transfer", async function (id) {
      await post(id, "transfer", { agent: agent });
      closeTransfer(false);
      toast("Transferred to " + shown, TOAST_MS);
      if (id === state.currentId) threadRefresher.now();
      queueRefresher.now();
    }, $("transfer-confirm"));
  }

  // ---------------------------------------------------------------------------------------
  // Image overlay
  // ---------------------------------------------------------------------------------------
  const overlay = { urls: [], index: 0, who: "", when: null, opener: null };

  function openOverlay(urls, index, who, when, opener) {
    overlay.urls = urls;
    overlay.index = index;
    overlay.who = who;
    overlay.when = when;
    overlay.opener = opener;
    $("image-overlay").hidden = false;
    setModal(true);
    setZoom(false);
    showOverlayImage();
    $("overlay-close").focus();
  }

  function showOverlayImage() {
    const url = overlay.urls[overlay.index];
    const img = $("overlay-img");
    const n = overlay.urls.length;
    const caption = "Screenshot " + (overlay.index + 1) + " of " + n + " · " + overlay.who +
      (overlay.when ? " · " + formatClock(overlay.when) : "");
    img.src = url;
    img.alt = "Screenshot " + (overlay.index + 1) + " of " + n + " from " + overlay.who;
    $("overlay-caption").textContent = caption;
    $("overlay-open").href = url;
    $("overlay-prev").hidden = n < 2;
    $("overlay-next").hidden = n < 2;
    $("overlay-prev").disabled = overlay.index === 0;
    $("overlay-next").disabled = overlay.index === n - 1;
    $("overlay-stage").scrollTop = 0;
    $("overlay-stage").scrollLeft = 0;
  }

  function stepOverlay(delta) {
    const next = overlay.index + delta;
    if (next < 0 || next >= overlay.urls.length) return;
    overlay.index = next;
    showOverlayImage();
  }

  function setZoom(on) {
    $("image-overlay").classList.toggle("is-zoomed", on);
    $("overlay-zoom").setAttribute("aria-pressed", on ? "true" : "false");
    $("overlay-zoom").textContent = on ? "Fit to screen" : "Actual size";
  }

  function closeOverlay() {
    const node = $("image-overlay");
    if (node.hidden) return;
    node.hidden = true;
    setModal(false);
    $("overlay-img").removeAttribute("src");
    const opener = overlay.opener;
    overlay.opener = null;
    if (opener && opener.isConnected) opener.focus();
    else if (state.currentId) $("messages").focus();
  }

  function overlayKeydown(e) {
    if (e.key === "ArrowLeft") {
      e.preventDefault();
      stepOverlay(-1);
    } else if (e.key === "ArrowRight") {
      e.preventDefault();
      stepOverlay(1);
    } else {
      modalKeydown($("image-overlay"), closeOverlay, e);
    }
  }

  /** A modal dialog is open (or no longer): the page behind it is inert and does not scroll. */
  function setModal(on) {
    $("topbar").inert = on;
    $("layout").inert = on;
    document.body.classList.toggle("has-overlay", on);
  }

  /** Escape closes a modal dialog; Tab and Shift+Tab go round its controls, never out of it. */
  function modalKeydown(dialog, close, e) {
    if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      close();
      return;
    }
    if (e.key !== "Tab") return;
    const focusables = Array.prototype.filter.call(
      dialog.querySelectorAll("button, a[href], input, select, textarea"),
      function (n) { return !n.hidden && !n.disabled && n.offsetParent !== null; }
    );
    if (!focusables.length) return;
    const firstEl = focusables[0];
    const lastEl = focusables[focusables.length - 1];
    if (e.shiftKey && (document.activeElement === firstEl || !dialog.contains(document.activeElement))) {
      e.preventDefault();
      lastEl.focus();
    } else if (!e.shiftKey && (document.activeElement === lastEl || !dialog.contains(document.activeElement))) {
      e.preventDefault();
      firstEl.focus();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Add to regression set (operators and admins)
  // ---------------------------------------------------------------------------------------
  /*
   * Any user message can become a case of a template's regression set. The dialog starts from
   * what the bot did with the message, because the usual case is "it got this wrong": one click
   * turns the expectation round. The case keeps the screenshots as Snapdesk stored them
   * (redacted), and the server refuses screenshots nobody checked for personal data until the
   * operator says they looked at them.
   */
  const CASE_LISTS = [["case-must-contain", "Must contain"], ["case-must-not-contain", "Must not contain"], ["case-cite", "Cites"]];
  const CASE_LIST_MAX = 20;
  const CASE_ENTRY_MAX = 200;
  const caseDialog = { messageId: null, opener: null, saving: false, did: null, opened: 0 };

  function mayAddCases() {
    return Boolean(state.me) && (state.me.role === "operator" || state.me.role === "admin");
  }

  function addCaseButton(m) {
    const button = el("button", {
      type: "button", class: "msg-action", "data-testid": "add-case", "aria-haspopup": "dialog",
      title: "Make this message a case of a template's regression set", text: "Add to regression set"
    });
    button.addEventListener("click", function () {
      openCaseDialog(m, button);
    });
    return button;
  }

  /**
   * What the bot did with a user message, or null: {kind: answer|handover|draft, reason (of a
   * hand-over), confidence, template and version (the one that answered, when known)}.
   */
  function outcomeOf(t, m) {
    const list = Array.isArray(t && t.messages) ? t.messages : [];
    let reply = null;
    list.forEach(function (r) {
      if (r && r.reply_to !== null && r.reply_to !== undefined && String(r.reply_to) === String(m.id) &&
          (r.kind === "answer" || r.kind === "handover" || r.kind === "draft")) reply = r;
    });
    if (!reply) return null;
    return {
      kind: reply.kind, reason: reply.kind === "handover" ? str(reply.reason) : "", confidence: reply.confidence,
      template: str(reply.template_name), version: isNum(reply.template_version) ? reply.template_version : null
    };
  }

  /** "billing v3": the template (and version) that answered, or "" when the thread does not say. */
  function answeredBy(outcome) {
    if (!outcome || !outcome.template) return "";
    return outcome.template + (outcome.version !== null ? " v" + outcome.version : "");
  }

  function outcomeText(outcome) {
    if (!outcome) return "The bot did not reply to this message.";
    if (outcome.kind === "draft") return "A person took over before the bot's answer was sent.";
    const conf = isNum(outcome.confidence) ? " (confidence " + outcome.confidence.toFixed(2) + ")" : "";
    if (outcome.kind === "handover") return "The bot handed over" + (outcome.reason ? ": " + reasonLabel(outcome.reason) : "") + conf + ".";
    return "The bot answered" + conf + ".";
  }

  function caseExpect() {
    return $("case-expect-handover").checked ? "handover" : "answer";
  }

  function setCaseExpect(expect) {
    $("case-expect-handover").checked = expect === "handover";
    $("case-expect-answer").checked = expect !== "handover";
    syncCaseExpect();
  }

  /** The reason shows with a hand-over; the quick switch says what it does against what the bot did. */
  function syncCaseExpect() {
    const expect = caseExpect();
    $("case-reason-wrap").hidden = expect !== "handover";
    let flip;
    if (!caseDialog.did) flip = expect === "answer" ? "Expect a hand-over instead" : "Expect an answer instead";
    else if (expect !== caseDialog.did) flip = "The bot got this right";
    else flip = "The bot got this wrong: it should have " + (expect === "answer" ? "handed over" : "answered");
    $("case-flip").textContent = flip;
  }

  /** The screenshots the case keeps: the stored copies, and whether anyone checked them for personal data. */
  function fillCaseShots(m) {
    const list = $("case-shots");
    list.textContent = "";
    const shots = Array.isArray(m.screenshots) ? m.screenshots : [];
    (Array.isArray(m.images) ? m.images : []).forEach(function (raw, i) {
      const url = safeUrl(raw);
      if (!url) return;
      const reading = shots[i] && typeof shots[i] === "object" ? shots[i] : {};
      const checked = reading.read === true;
      const hidden = hiddenData(reading.redacted);
      list.appendChild(el("li", { class: "case-shot" + (checked ? "" : " is-unchecked"), "data-testid": "case-shot" }, [
        el("img", { src: url, alt: "Screenshot " + (i + 1) + ", as stored", decoding: "async" }),
        el("span", {
          class: "case-shot-note",
          text: !checked ? "Not checked for personal data" : hidden ? "Painted out: " + hidden : "Checked: no personal data"
        })
      ]));
    });
    list.hidden = !list.childNodes.length;
  }

  /** The template choice: by default the server's (the template that answered, else the channel's). */
  async function fillCaseTemplates(outcome, channel) {
    const select = $("case-template");
    const opened = caseDialog.opened;
    select.textContent = "";
    const by = answeredBy(outcome);
    select.appendChild(el("option", {
      value: "", text: by ? "The one that answered (" + by + ")" : outcome ? "The one that answered" : "This channel's template"
    }));
    let data;
    try {
      data = await api("/operator/api/templates");
    } catch (_) {
      return; // the default still works
    }
    if (opened !== caseDialog.opened) return; // the dialog was opened again meanwhile
    const channels = Array.isArray(data.channels) ? data.channels : [];
    const used = channels.find(function (c) { return c && str(c.channel) === str(channel); });
    if (!outcome && used && str(used.template)) select.options[0].textContent = "This channel's template (" + str(used.template) + ")";
    (Array.isArray(data.templates) ? data.templates : []).forEach(function (t) {
      if (t && str(t.name)) select.appendChild(el("option", { value: str(t.name), text: str(t.name) }));
    });
  }

  function openCaseDialog(m, opener) {
    const t = state.thread;
    if (!t || !mayAddCases() || m.id === null || m.id === undefined) return;
    caseDialog.messageId = String(m.id);
    caseDialog.opener = opener;
    caseDialog.opened++;
    const outcome = outcomeOf(t, m);
    caseDialog.did = !outcome ? null : outcome.kind === "handover" ? "handover" : "answer";
    const text = $("case-text");
    text.textContent = str(m.text) || "No text: screenshots only";
    text.classList.toggle("is-empty", !str(m.text));
    fillCaseShots(m);
    $("case-did").textContent = outcomeText(outcome);
    setCaseExpect(caseDialog.did || "answer");
    $("case-reason").value = outcome && Object.prototype.hasOwnProperty.call(REASONS, outcome.reason) ? outcome.reason : "";
    ["case-must-contain", "case-must-not-contain", "case-cite", "case-notes"].forEach(function (id) { $(id).value = ""; });
    $("case-unchecked").hidden = true;
    $("case-allow").checked = false;
    setStatus($("case-status"), "");
    setBusy($("case-save"), false);
    $("case-notice").hidden = true;
    fillCaseTemplates(outcome, t.channel);
    $("case-dialog").hidden = false;
    setModal(true);
    $(caseExpect() === "handover" ? "case-expect-handover" : "case-expect-answer").focus();
  }

  function closeCaseDialog() {
    const node = $("case-dialog");
    if (node.hidden) return;
    node.hidden = true;
    setModal(false);
    const id = caseDialog.messageId;
    let opener = caseDialog.opener;
    caseDialog.messageId = null;
    caseDialog.opener = null;
    if (!opener || !opener.isConnected) {
      // Live updates drew the message again meanwhile: back to its new button.
      const message = messageNodes.get("id:" + id);
      opener = message ? message.querySelector("[data-testid=add-case]") : null;
    }
    if (opener) opener.focus();
    else if (state.currentId) $("messages").focus();
  }

  /** One entry a line, blanks left out; null (and the field named) when the server would refuse them. */
  function caseLists() {
    const out = {};
    for (const [id, label] of CASE_LISTS) {
      const entries = $(id).value.split("\n").map(function (line) { return line.trim(); }).filter(Boolean);
      const problem = entries.length > CASE_LIST_MAX ? "at most " + CASE_LIST_MAX + " lines"
        : entries.some(function (e) { return e.length > CASE_ENTRY_MAX; }) ? "lines of at most " + CASE_ENTRY_MAX + " characters" : "";
      if (problem) {
        setStatus($("case-status"), label + ": " + problem + ".", "bad");
        $(id).focus();
        return null;
      }
      out[id] = entries;
    }
    return out;
  }

  async function saveCase() {
    const id = caseDialog.messageId;
    if (caseDialog.saving || id === null) return;
    const unchecked = !$("case-unchecked").hidden;
    if (unchecked && !$("case-allow").checked) {
      setStatus($("case-status"), "Look at the screenshots first, then tick the box to add them as they are.", "bad");
      $("case-allow").focus();
      return;
    }
    const lists = caseLists();
    if (!lists) return;
    const expect = caseExpect();
    const body = {
      expect: expect, reason: expect === "handover" && $("case-reason").value ? $("case-reason").value : null,
      must_contain: lists["case-must-contain"], must_not_contain: lists["case-must-not-contain"], cite: lists["case-cite"],
      notes: $("case-notes").value.trim(), allow_unchecked_screenshots: unchecked
    };
    if ($("case-template").value) body.template = $("case-template").value;
    caseDialog.saving = true;
    setBusy($("case-save"), true);
    setStatus($("case-status"), "Adding the case…", "busy");
    let added;
    try {
      added = await api("/operator/api/messages/" + encodeURIComponent(id) + "/case", { method: "POST", json: body });
    } catch (err) {
      caseDialog.saving = false;
      setBusy($("case-save"), false);
      if (err.status === 401) return;
      if (caseDialog.messageId !== id) {
        showError(err.message); // the dialog was closed meanwhile
      } else if (err.code === "unchecked_screenshots") {
        setStatus($("case-status"), "");
        $("case-unchecked-text").textContent = err.message;
        $("case-unchecked").hidden = false;
        $("case-allow").focus();
      } else {
        setStatus($("case-status"), err.message || "The case could not be added.", "bad");
      }
      return;
    }
    caseDialog.saving = false;
    setBusy($("case-save"), false);
    if (caseDialog.messageId === id) closeCaseDialog();
    showCaseNotice(str(added.template));
  }

  function showCaseNotice(template) {
    $("case-notice-text").textContent = "Added to the " + template + " regression set";
    $("case-notice-link").href = "/operator#/templates/" + encodeURIComponent(template);
    $("case-notice").hidden = false;
  }

  // ---------------------------------------------------------------------------------------
  // Search
  // ---------------------------------------------------------------------------------------
  const search = { seq: 0, timer: null, query: "", results: null };

  function setSearchOpen(open) {
    const panel = $("search-panel");
    panel.hidden = !open;
    $("search-input").setAttribute("aria-expanded", open ? "true" : "false");
  }

  function scheduleSearch(immediate) {
    clearTimeout(search.timer);
    const q = $("search-input").value.trim();
    if (!q) {
      search.seq++;
      search.query = "";
      search.results = null;
      $("search-results").textContent = "";
      $("search-status").textContent = "";
      setSearchOpen(false);
      return;
    }
    search.timer = setTimeout(function () {
      runSearch(q);
    }, immediate ? 0 : SEARCH_DEBOUNCE_MS);
  }

  async function runSearch(q) {
    const seq = ++search.seq;
    setSearchOpen(true);
    $("search-status").textContent = "Searching…";
    $("search-panel").setAttribute("aria-busy", "true");
    let data;
    try {
      data = await api("/agent/api/search?q=" + encodeURIComponent(q));
    } catch (err) {
      if (seq !== search.seq) return;
      $("search-panel").setAttribute("aria-busy", "false");
      $("search-results").textContent = "";
      $("search-status").textContent = err.message || "Search failed.";
      return;
    }
    if (seq !== search.seq) return; // a newer search is on its way
    $("search-panel").setAttribute("aria-busy", "false");
    search.query = q;
    search.results = Array.isArray(data.results) ? data.results : [];
    renderSearch();
  }

  function renderSearch() {
    const list = $("search-results");
    list.textContent = "";
    const results = search.results || [];
    const n = results.length;
    $("search-status").textContent = n === 0
      ? "No conversations match “" + search.query + "”."
      : n === 1 ? "1 result" : n + " results";
    results.forEach(function (r) {
      if (!r || r.conversation_id === undefined || r.conversation_id === null) return;
      const when = parseTime(r.created_at);
      const role = str(r.role);
      const snippet = el("div", { class: "sr-snippet" });
      fillHighlighted(snippet, r.snippet, search.query);
      const button = el("button", {
        type: "button", class: "sr-item", "data-testid": "search-result",
        "data-conversation-id": String(r.conversation_id),
        "data-message-id": r.message_id === null || r.message_id === undefined ? "" : String(r.message_id)
      }, [
        el("div", { class: "sr-top" }, [
          el("span", { class: "ch-badge " + channelClass(r.channel), text: channelLabel(r.channel) }),
          el("span", { class: "sr-user", text: str(r.user_name) || "Conversation " + r.conversation_id }),
          el("span", { class: "sr-role", text: Object.prototype.hasOwnProperty.call(ROLES, role) ? ROLES[role] : role }),
          r.in_screenshot === true ? el("span", {
            class: "sr-in-shot", "data-testid": "in-screenshot", title: "Found in the text read from a screenshot of this message",
            text: "in screenshot"
          }) : null,
          when ? el("time", { class: "sr-time", datetime: when.toISOString(), title: formatFull(when), text: formatClock(when) }) : null
        ]),
        snippet
      ]);
      button.addEventListener("click", function () {
        openSearchResult(r);
      });
      list.appendChild(el("li", null, [button]));
    });
  }

  function openSearchResult(r) {
    setSearchOpen(false);
    focusMessageId = r.message_id === null || r.message_id === undefined ? null : String(r.message_id);
    const id = String(r.conversation_id);
    selectConversation(id, { push: true, focus: true });
  }

  function searchKeydown(e) {
    const items = Array.prototype.slice.call($("search-results").querySelectorAll("[data-testid=search-result]"));
    const index = items.indexOf(document.activeElement);
    if (e.key === "Escape") {
      if (!$("search-panel").hidden) {
        e.preventDefault();
        setSearchOpen(false);
        $("search-input").focus();
      } else if (e.target === $("search-input") && $("search-input").value) {
        e.preventDefault();
        $("search-input").value = "";
        scheduleSearch(true);
      }
    } else if (e.key === "ArrowDown") {
      if (!items.length) return;
      e.preventDefault();
      setSearchOpen(true);
      items[Math.min(items.length - 1, index + 1)].focus();
    } else if (e.key === "ArrowUp") {
      if (index < 0) return;
      e.preventDefault();
      if (index === 0) $("search-input").focus();
      else items[index - 1].focus();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Live updates
  // ---------------------------------------------------------------------------------------
  let source = null;
  let everOpened = false;
  let retryMs = 2000;
  let pollTimer = null;

  function connect() {
    if (typeof EventSource !== "function") {
      setLive("offline");
      startPolling();
      return;
    }
    if (source) source.close();
    setLive(everOpened ? "offline" : "connecting");
    source = new EventSource("/agent/api/events");
    source.addEventListener("open", function () {
      everOpened = true;
      retryMs = 2000;
      setLive("live");
      stopPolling();
      // Something may have happened before the stream (re)opened: catch up.
      refreshAll();
    });
    source.addEventListener("update", onUpdate);
    source.addEventListener("error", function () {
      if (!source) return;
      setLive("offline");
      startPolling();
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the session ended): check the session, then try again.
        source = null;
        loadMe().then(function (ok) {
          if (state.leaving) return;
          setTimeout(connect, ok ? retryMs : Math.min(retryMs * 2, 30000));
          retryMs = Math.min(retryMs * 2, 30000);
        });
      }
    });
  }

  function onUpdate(e) {
    let data = null;
    try {
      data = JSON.parse(e.data);
    } catch (_) {
      data = null;
    }
    queueRefresher.schedule();
    if (!data || data.conversation_id === undefined || data.conversation_id === null) {
      if (state.currentId) threadRefresher.schedule();
      return;
    }
    if (state.currentId && String(data.conversation_id) === state.currentId) threadRefresher.schedule();
  }

  function refreshAll() {
    queueRefresher.now();
    if (state.currentId) threadRefresher.now();
  }

  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(refreshAll, POLL_WHILE_OFFLINE_MS);
  }

  function stopPolling() {
    if (!pollTimer) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }

  // ---------------------------------------------------------------------------------------
  // Sign out
  // ---------------------------------------------------------------------------------------
  async function logout() {
    const button = $("logout");
    button.disabled = true;
    button.textContent = "Signing out…";
    state.leaving = true;
    if (source) {
      source.close();
      source = null;
    }
    await signOut(state.csrf);
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------
  function wire() {
    $("filter-channel").addEventListener("change", function () {
      $("queue").setAttribute("aria-busy", "true");
      queueRefresher.now();
    });
    $("filter-reason").addEventListener("change", function () {
      $("queue").setAttribute("aria-busy", "true");
      queueRefresher.now();
    });

    $("error-close").addEventListener("click", clearError);
    $("logout").addEventListener("click", logout);
    $("back").addEventListener("click", function () {
      const id = state.currentId;
      selectConversation(null, { push: true });
      const row = id ? queueRows.get(id) : null;
      if (row) row.link.focus();
      else $("filter-channel").focus();
    });

    $("claim").addEventListener("click", claim);
    $("resolve").addEventListener("click", resolve);
    $("hand-back").addEventListener("click", handBack);
    $("add-note").addEventListener("click", function () {
      sendText("note");
    });
    $("composer-form").addEventListener("submit", function (e) {
      e.preventDefault();
      sendText("reply");
    });
    const composer = $("composer");
    composer.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.isComposing) {
        e.preventDefault();
        if (e.shiftKey) sendText("note");
        else sendText("reply");
      }
    });
    composer.addEventListener("input", function () {
      saveDraft();
      updateSuggestion();
      updateComposerState();
    });
    $("use-draft").addEventListener("click", useDraft);
    $("suggestion-dismiss").addEventListener("click", dismissDraft);

    // Transfer
    $("transfer").addEventListener("click", function () {
      if ($("transfer-panel").hidden) openTransfer();
      else closeTransfer(true);
    });
    $("transfer-cancel").addEventListener("click", function () {
      closeTransfer(true);
    });
    $("transfer-panel").addEventListener("submit", function (e) {
      e.preventDefault();
      transfer();
    });
    $("transfer-panel").addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        closeTransfer(true);
      }
    });
    document.addEventListener("mousedown", function (e) {
      if (!$("transfer-panel").hidden && !e.target.closest(".transfer-wrap")) closeTransfer(false);
    });

    const messages = $("messages");
    messages.addEventListener("scroll", function () {
      pinned = nearBottom(messages);
      if (pinned) $("new-messages").hidden = true;
    }, { passive: true });
    // Screenshots load after the text: keep the newest message in view while pinned to the bottom.
    messages.addEventListener("load", function () {
      if (pinned) messages.scrollTop = messages.scrollHeight;
    }, true);
    $("new-messages").addEventListener("click", function () {
      messages.scrollTop = messages.scrollHeight;
      $("new-messages").hidden = true;
      messages.focus({ preventScroll: true });
    });

    // Overlay
    $("overlay-close").addEventListener("click", closeOverlay);
    $("overlay-prev").addEventListener("click", function () { stepOverlay(-1); });
    $("overlay-next").addEventListener("click", function () { stepOverlay(1); });
    $("overlay-zoom").addEventListener("click", function () {
      setZoom(!$("image-overlay").classList.contains("is-zoomed"));
    });
    $("overlay-img").addEventListener("click", function () {
      setZoom(!$("image-overlay").classList.contains("is-zoomed"));
    });
    $("overlay-stage").addEventListener("click", function (e) {
      if (e.target === $("overlay-stage")) closeOverlay();
    });
    $("image-overlay").addEventListener("keydown", overlayKeydown);

    // Add to regression set
    Object.keys(REASONS).forEach(function (code) {
      $("case-reason").appendChild(el("option", { value: code, text: REASONS[code] }));
    });
    $("case-form").addEventListener("submit", function (e) {
      e.preventDefault();
      saveCase();
    });
    $("case-expect-answer").addEventListener("change", syncCaseExpect);
    $("case-expect-handover").addEventListener("change", syncCaseExpect);
    $("case-flip").addEventListener("click", function () {
      setCaseExpect(caseExpect() === "handover" ? "answer" : "handover");
    });
    $("case-allow").addEventListener("change", function () {
      setStatus($("case-status"), "");
    });
    $("case-close").addEventListener("click", closeCaseDialog);
    $("case-cancel").addEventListener("click", closeCaseDialog);
    $("case-dialog").addEventListener("keydown", function (e) {
      modalKeydown($("case-dialog"), closeCaseDialog, e);
    });
    $("case-notice-close").addEventListener("click", function () {
      $("case-notice").hidden = true;
    });

    // Search
    const input = $("search-input");
    $("search-form").addEventListener("submit", function (e) {
      e.preventDefault();
      scheduleSearch(true);
    });
    input.addEventListener("input", function () {
      scheduleSearch(false);
    });
    input.addEventListener("focus", function () {
      if (search.results && input.value.trim() === search.query) setSearchOpen(true);
    });
    $("search-wrap").addEventListener("keydown", searchKeydown);
    document.addEventListener("mousedown", function (e) {
      if (!$("search-wrap").contains(e.target)) setSearchOpen(false);
    });
    $("search-wrap").addEventListener("focusout", function (e) {
      if (e.relatedTarget && !$("search-wrap").contains(e.relatedTarget)) setSearchOpen(false);
    });

    window.addEventListener("popstate", function () {
      selectConversation(idFromHash());
    });
    window.addEventListener("hashchange", function () {
      const id = idFromHash();
      if (id !== state.currentId) selectConversation(id);
    });
    window.addEventListener("resize", function () { autosize(true); }, { passive: true });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") {
        tickClocks();
        if (state.live !== "live") refreshAll();
      }
    });
  }

  async function start() {
    wire();
    setLive("connecting");
    updateComposerState();
    const ok = await loadMe();
    if (state.leaving) return;
    if (!ok) {
      document.body.classList.remove("is-loading");
      showError("Can't reach the server. Reload the page to try again.");
      $("queue").setAttribute("aria-busy", "false");
      return;
    }
    $("user-name").textContent = state.me.name;
    $("avatar").textContent = initials(state.me.name);
    document.body.classList.remove("is-loading");
    try {
      await loadQueue();
    } catch (_) {
      /* shown in the queue; live updates retry */
    }
    const id = idFromHash();
    if (id) selectConversation(id);
    connect();
    setInterval(tickClocks, CLOCK_MS);
  }

  window.SnapdeskAgent = Object.freeze({
    state: function () {
      return {
        user: state.me ? state.me.name : null,
        waiting: state.waitingCount,
        queue: state.queue.length,
        open: state.currentId,
        status: state.thread ? state.thread.status : null,
        live: state.live
      };
    },
    refresh: refreshAll
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start, { once: true });
  else start();
})();

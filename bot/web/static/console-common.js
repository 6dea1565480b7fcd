/*
 * What the agent and operator consoles share: DOM building, labels, times, the console API
 * client, notices and signing out. One copy, so a fix to how text is inserted or how an API
 * error reads reaches both consoles at once.
 *
 * An ES module served from /static (script-src 'self' allows it; no build step). The widget
 * cannot import it: it runs as a classic script on customers' pages and keeps its own small
 * helpers under the same names (el, parseTime, httpUrl, fillText, readJson).
 * Everything from the server is inserted as text nodes only.
 */

// -----------------------------------------------------------------------------------------
// DOM
// -----------------------------------------------------------------------------------------
export function $(id) {
  return document.getElementById(id);
}

/** Attributes from a plain object: "text" is text content, false/null/undefined are left out. */
export function setAttrs(node, attrs) {
  if (!attrs) return;
  for (const k of Object.keys(attrs)) {
    const v = attrs[k];
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "class") node.setAttribute("class", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

/** An element; string children become text nodes, never markup. */
export function el(tag, attrs, children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  if (children) for (const c of children) if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

export function str(v) {
  return v === null || v === undefined ? "" : String(v);
}

export function setText(node, value) {
  node.textContent = str(value);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

/** A status line: its text, and its tone ("bad", "busy"...) for the styles. */
export function setStatus(node, text, tone) {
  setText(node, text || "");
  if (tone) node.setAttribute("data-tone", tone);
  else node.removeAttribute("data-tone");
}

/** A button at work: disabled and announced as busy, or back to normal. */
export function setBusy(button, busy) {
  button.disabled = busy;
  if (busy) button.setAttribute("aria-busy", "true");
  else button.removeAttribute("aria-busy");
}

/** The first letter of a name, whole even when it is outside the Basic Multilingual Plane. */
export function initials(name) {
  const s = str(name).trim();
  return s ? Array.from(s)[0].toUpperCase() : "?";
}

// -----------------------------------------------------------------------------------------
// Labels and numbers
// -----------------------------------------------------------------------------------------
export const REASONS = {
  user_request: "Asked for a person",
  low_confidence: "Low confidence",
  model_declined: "Bot declined",
  sensitive_topic: "Sensitive topic",
  repeated_failure: "Repeated failure",
  unreadable_image: "Unreadable image",
  no_knowledge: "Not in the help centre",
  engine_error: "Engine error",
  busy: "Bot busy"
};
export const CHANNELS = { widget: "Widget", slack: "Slack", telegram: "Telegram", cli: "CLI" };

function own(table, key) {
  return Object.prototype.hasOwnProperty.call(table, key);
}

/** A hand-over reason for people; a reason this page does not know yet still reads as words. */
export function reasonLabel(code) {
  const c = str(code);
  if (own(REASONS, c)) return REASONS[c];
  if (!c) return "Handed over";
  const words = c.replace(/[_-]+/g, " ").trim();
  return words ? words.charAt(0).toUpperCase() + words.slice(1) : c;
}

export function channelLabel(code) {
  const c = str(code);
  return own(CHANNELS, c) ? CHANNELS[c] : c || "Unknown";
}

export function isNum(v) {
  return typeof v === "number" && isFinite(v);
}

/** The confidence pill's colour band: the same thresholds in both consoles. */
export function confidenceClass(c) {
  if (!isNum(c)) return "conf conf-none";
  if (c < 0.5) return "conf conf-low";
  if (c < 0.75) return "conf conf-mid";
  return "conf conf-high";
}

/** A server timestamp as a Date, or null. */
export function parseTime(iso) {
  if (!iso) return null;
  // Python writes microseconds; trim the fraction to milliseconds for every browser.
  const d = new Date(String(iso).replace(/(\.\d{3})\d+/, "$1"));
  return isNaN(d.getTime()) ? null : d;
}

// -----------------------------------------------------------------------------------------
// The console API
// -----------------------------------------------------------------------------------------
export class ApiError extends Error {
  constructor(status, code, message, issues, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.issues = issues || null;
    this.detail = detail || null; // the whole refusal, for routes that say more (a publish gate's check)
  }
}

export async function readJson(res) {
  try {
    return await res.json();
  } catch (_) {
    return null;
  }
}

/**
 * The error a response carries: Snapdesk's flat {error, message, issues}, FastAPI's {detail},
 * or, when the server said nothing readable, the console's own words for the status.
 */
export function errorFrom(status, body, fallback) {
  let code = "";
  let message = "";
  let issues = null;
  let d = null;
  if (body && typeof body === "object") {
    const detail = body.detail;
    d = detail && typeof detail === "object" && !Array.isArray(detail) ? detail : body;
    if (typeof d.error === "string") code = d.error;
    if (Array.isArray(d.issues)) issues = d.issues;
    if (typeof d.message === "string") message = d.message;
    else if (typeof detail === "string") message = detail;
    else if (Array.isArray(detail) && detail.length && detail[0] && typeof detail[0].msg === "string") {
      message = "The request was not valid: " + detail[0].msg;
    }
  }
  if (!message) message = (fallback && fallback(status)) || "The request failed (" + status + ").";
  return new ApiError(status, code || String(status), message, issues, d);
}

/**
 * A fetch for the console API: same-origin, never cached, the CSRF token on every change.
 * api(path, {method, json, form, signal}) resolves to the JSON body or throws an ApiError
 * (an abort is rethrown as it is). On 401 the console's sign-in step runs; a change refused
 * for a stale CSRF token is retried once after refreshCsrf() when the console gives one.
 *   csrf: () => token; onUnauthorized: () => void; refreshCsrf: async () => bool;
 *   fallback: (status) => message when the server gave none (status 0: unreachable).
 */
export function apiClient(config) {
  async function api(path, options, retried) {
    const opts = options || {};
    const method = opts.method || "GET";
    const headers = { Accept: "application/json" };
    const init = { method: method, credentials: "same-origin", cache: "no-store", headers: headers };
    if (method !== "GET") headers["X-CSRF-Token"] = config.csrf() || "";
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    } else if (opts.form) {
      init.body = opts.form;
    }
    if (opts.signal) init.signal = opts.signal;
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw errorFrom(0, null, config.fallback);
    }
    const data = await readJson(res);
    if (res.ok) return data || {};
    const err = errorFrom(res.status, data, config.fallback);
    if (res.status === 401) {
      config.onUnauthorized();
      throw err;
    }
    // A stale CSRF token (the session was renewed elsewhere): fetch the current one and try once more.
    if (res.status === 403 && err.code === "csrf" && method !== "GET" && !retried && config.refreshCsrf) {
      if (await config.refreshCsrf()) return api(path, opts, true);
    }
    throw err;
  }
  return function (path, options) {
    return api(path, options, false);
  };
}

/** Sign out on the server, then go to the sign-in page whatever the answer. */
export async function signOut(csrf) {
  try {
    await fetch("/logout", {
      method: "POST", credentials: "same-origin", redirect: "manual",
      headers: { "X-CSRF-Token": csrf || "", "Content-Type": "application/json" }, body: "{}"
    });
  } catch (_) {
    /* the sign-in page is where we go either way */
  }
  location.assign("/login");
}

// -----------------------------------------------------------------------------------------
// Notices: the error banner (#error, #error-text) and the toast (#toast) of both pages
// -----------------------------------------------------------------------------------------
let toastTimer = 0;

export function showError(message) {
  setText($("error-text"), str(message) || "Something went wrong.");
  $("error").hidden = false;
}

export function clearError() {
  $("error").hidden = true;
  setText($("error-text"), "");
}

/** A short note that goes away by itself after ms milliseconds (5 s unless told). */
export function toast(message, ms) {
  const node = $("toast");
  clearTimeout(toastTimer);
  setText(node, message);
  node.classList.add("is-shown");
  toastTimer = setTimeout(function () {
    node.classList.remove("is-shown");
    setText(node, "");
  }, ms || 5000);
}

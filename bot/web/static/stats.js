/*
 * The operator console's Statistics view: what became of each user message, resolution,
 * satisfaction, time to first answer, hand-overs by reason, overall and per template version.
 *
 * Operators act on these numbers, so each one reads one way: the outcome shares are of one
 * total and are rounded so the shown percentages add up to 100%; every bar's label is the
 * number its height is drawn from; durations are written in seconds and minutes, never raw
 * milliseconds; and each figure says, in a line under it, how it was counted.
 *
 * An ES module imported by operator.js, which owns navigation and the API client. Everything
 * from the server is inserted as text nodes only; charts are SVG built with createElementNS.
 */
import { $, el, setAttrs, setText, reasonLabel, isNum, showError, clear, setStatus } from "./console-common.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const OUTCOMES = {
  answered: { label: "Answered by the bot", color: "#4f46e5" },
  handed_over: { label: "Handed over", color: "#f59e0b" },
  for_agent: { label: "For an agent", color: "#0ea5e9" },
  pending: { label: "Still pending", color: "#9ca3af" }
};
const OUTCOME_ORDER = ["answered", "handed_over", "for_agent", "pending"];

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}


function num(v) {
  return isNum(v) ? v : 0;
}

function pct(v) {
  return isNum(v) ? Math.round(v * 100) + "%" : "—";
}

function round1(v) {
  return Math.round(v * 10) / 10;
}

function count(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

/** Seconds for people: "0.8 s", "12 s", "2 min 5 s", "1 h 3 min". */
export function duration(seconds) {
  if (!isNum(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s > 0 && s < 0.05) return "< 0.1 s";
  if (s < 9.95) return String(round1(s)) + " s";
  const whole = Math.round(s);
  if (whole < 60) return whole + " s";
  if (whole < 3600) {
    const rest = whole % 60;
    return Math.floor(whole / 60) + " min" + (rest ? " " + rest + " s" : "");
  }
  const minutes = Math.round(whole / 60);
  const rest = minutes % 60;
  return Math.floor(minutes / 60) + " h" + (rest ? " " + rest + " min" : "");
}

/**
 * Whole percentages of `counts` that add up to 100 (largest remainder), so a list of shares of
 * one total never reads 99% or 101%.
 */
export function wholePercents(counts) {
  const total = counts.reduce(function (a, c) { return a + c; }, 0);
  if (!total) return counts.map(function () { return 0; });
  const exact = counts.map(function (c) { return (c * 100) / total; });
  const out = exact.map(Math.floor);
  let left = 100 - out.reduce(function (a, c) { return a + c; }, 0);
  const order = exact.map(function (e, i) { return i; }).sort(function (a, b) {
    return (exact[b] - out[b]) - (exact[a] - out[a]) || a - b;
  });
  for (let k = 0; left > 0; k++, left--) out[order[k % order.length]] += 1;
  return out;
}

function parseDay(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(String(s || ""));
  return m ? new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])) : null;
}

function dayLabel(s, long) {
  const d = parseDay(s);
  if (!d) return String(s || "");
  try {
    return d.toLocaleDateString("en-US", long ? { weekday: "short", month: "short", day: "numeric", timeZone: "UTC" }
      : { month: "short", day: "numeric", timeZone: "UTC" });
  } catch (_) {
    return String(s);
  }
}

function outcomeLabel(share) {
  const base = OUTCOMES[share.outcome] ? OUTCOMES[share.outcome].label : String(share.outcome || "");
  return share.outcome === "handed_over" && share.reason ? "Handed over: " + reasonLabel(share.reason) : base;
}

function versionLabel(v) {
  return v.template ? v.template + " v" + v.version : "No template";
}

function reasonsText(reasons) {
  const keys = Object.keys(reasons || {});
  return keys.length ? keys.map(function (k) { return reasonLabel(k) + " " + num(reasons[k]); }).join(" · ") : "None";
}
function dataTable(host, headers, rows) {
  clear(host);
  const table = el("table", { class: "op-table" });
  const tr = el("tr");
  for (const h of headers) tr.appendChild(el("th", { scope: "col", text: h }));
  table.appendChild(el("thead", null, [tr]));
  const body = el("tbody");
  for (const r of rows) body.appendChild(el("tr", null, r.map(function (c) {
    return el("td", { text: String(c) });
  })));
  if (!rows.length) body.appendChild(el("tr", null, [el("td", { colspan: String(headers.length), class: "muted", text: "No data." })]));
  table.appendChild(body);
  host.appendChild(el("details", null, [el("summary", { text: "Show the data as a table" }), table]));
}

function chartWidth(host, fallback) {
  const w = host.clientWidth;
  return Math.max(280, Math.floor(w > 0 ? w : fallback));
}

function niceStep(max, ticks) {
  if (max <= 0) return 1;
  const raw = max / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  return Math.max(1, step);
}

function makeSvg(kind, width, height, label) {
  return svg("svg", {
    "data-chart": kind, viewBox: "0 0 " + width + " " + height, width: String(width), height: String(height),
    role: "img", "aria-label": label, preserveAspectRatio: "xMinYMin meet"
  });
}

function emptyNote(root, cx, cy, text) {
  root.appendChild(svg("text", { x: cx, y: cy, "text-anchor": "middle", fill: "#6b7280", "font-size": 13 }, text));
}

/** Value axis with gridlines, horizontal (for vertical bars). Returns the y scale. */
function yAxis(root, m, width, height, max, label) {
  const plotH = height - m.top - m.bottom;
  const step = niceStep(max, 4);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const y = function (v) {
    return m.top + plotH - (v / top) * plotH;
  };
  const g = svg("g", { class: "axis axis-y", "font-size": 11, fill: "#6b7280" });
  for (let v = 0; v <= top + 1e-9; v += step) {
    const yy = Math.round(y(v)) + 0.5;
    g.appendChild(svg("line", { x1: m.left, x2: width - m.right, y1: yy, y2: yy, stroke: v === 0 ? "#9ca3af" : "#eef0f3" }));
    g.appendChild(svg("text", { x: m.left - 6, y: yy + 4, "text-anchor": "end", "data-tick": v }, formatTick(v)));
  }
  if (label) {
    g.appendChild(svg("text", {
      x: 0, y: 0, transform: "translate(12 " + (m.top + plotH / 2) + ") rotate(-90)", "text-anchor": "middle", fill: "#4b5563"
    }, label));
  }
  root.appendChild(g);
  return y;
}

function formatTick(v) {
  return Number.isInteger(v) ? String(v) : String(round1(v));
}

/** Messages per day, stacked by outcome: a bar is as tall as its label says, the day's messages. */
function drawMessages(host, days) {
  clear(host);
  const width = chartWidth(host, 900);
  const height = 280;
  const m = { top: 22, right: 12, bottom: 44, left: 56 };
  const totals = days.map(function (d) {
    return OUTCOME_ORDER.reduce(function (a, k) { return a + num(d[k]); }, 0);
  });
  const sum = totals.reduce(function (a, t) { return a + t; }, 0);
  const root = makeSvg("messages", width, height,
    "Messages per day by outcome, " + days.length + " days, " + sum + " messages in total.");
  host.appendChild(root);
  const max = totals.reduce(function (a, t) { return Math.max(a, t); }, 0);
  const y = yAxis(root, m, width, height, max, "Messages");
  const plotW = width - m.left - m.right;
  if (!days.length || max === 0) {
    emptyNote(root, m.left + plotW / 2, m.top + (height - m.top - m.bottom) / 2, "No messages in this period.");
    return;
  }
  const band = plotW / days.length;
  const barW = Math.max(3, Math.min(44, band * 0.68));
  const every = Math.max(1, Math.ceil(days.length * 56 / plotW));
  const showTotals = band >= 22;
  const bars = svg("g", { class: "bars" });
  days.forEach(function (d, i) {
    const total = totals[i];
    const x = m.left + band * i + (band - barW) / 2;
    const g = svg("g", { class: "bar", "data-date": d.date, "data-total": total });
    g.appendChild(svg("title", null, dayLabel(d.date, true) + ": " + count(total, "message", "messages") + " — " +
      OUTCOME_ORDER.map(function (k) { return num(d[k]) + " " + OUTCOMES[k].label.toLowerCase(); }).join(", ")));
    let below = 0;
    for (const k of OUTCOME_ORDER) {
      const n = num(d[k]);
      if (n <= 0) continue;
      g.appendChild(svg("rect", {
        x: x, y: y(below + n), width: barW, height: Math.max(0, y(below) - y(below + n)), fill: OUTCOMES[k].color,
        "data-series": k, "data-count": n
      }));
      below += n;
    }
    if (showTotals && total > 0) {
      g.appendChild(svg("text", { x: x + barW / 2, y: y(total) - 5, "text-anchor": "middle", "font-size": 11, fill: "#374151",
        "data-label": "total" }, String(total)));
    }
    bars.appendChild(g);
    if (i % every === 0) {
      const cx = m.left + band * i + band / 2;
      bars.appendChild(svg("line", { x1: cx, x2: cx, y1: y(0), y2: y(0) + 4, stroke: "#9ca3af" }));
      bars.appendChild(svg("text", { x: cx, y: height - m.bottom + 17, "text-anchor": "middle", "font-size": 11, fill: "#6b7280" }, dayLabel(d.date)));
    }
  });
  root.appendChild(bars);
  root.appendChild(svg("text", { x: m.left + plotW / 2, y: height - 6, "text-anchor": "middle", "font-size": 11, fill: "#4b5563" }, "Day (UTC)"));
}

function drawReasons(host, reasons) {
  clear(host);
  const width = chartWidth(host, 520);
  const rowH = 30;
  const m = { top: 8, right: 44, bottom: 38, left: Math.min(180, Math.max(110, Math.round(width * 0.34))) };
  const height = Math.max(140, m.top + m.bottom + rowH * Math.max(reasons.length, 1));
  const total = reasons.reduce(function (a, r) { return a + r.value; }, 0);
  const root = makeSvg("reasons", width, height, "Hand-overs by reason: " + (reasons.length ? reasons.map(function (r) {
    return r.label + " " + r.value;
  }).join(", ") : "none") + ".");
  host.appendChild(root);
  const plotW = width - m.left - m.right;
  const max = reasons.reduce(function (a, r) { return Math.max(a, r.value); }, 0);
  const step = niceStep(max, 4);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const x = function (v) {
    return m.left + (v / top) * plotW;
  };
  const axis = svg("g", { class: "axis axis-x", "font-size": 11, fill: "#6b7280" });
  const plotBottom = height - m.bottom;
  for (let v = 0; v <= top + 1e-9; v += step) {
    const xx = Math.round(x(v)) + 0.5;
    axis.appendChild(svg("line", { x1: xx, x2: xx, y1: m.top, y2: plotBottom, stroke: v === 0 ? "#9ca3af" : "#eef0f3" }));
    axis.appendChild(svg("text", { x: xx, y: plotBottom + 16, "text-anchor": "middle" }, formatTick(v)));
  }
  axis.appendChild(svg("text", { x: m.left + plotW / 2, y: height - 4, "text-anchor": "middle", fill: "#4b5563" }, "Hand-overs"));
  root.appendChild(axis);
  if (!reasons.length || total === 0) {
    emptyNote(root, m.left + plotW / 2, m.top + (plotBottom - m.top) / 2, "No hand-overs in this period.");
    return;
  }
  const barH = Math.min(20, rowH * 0.66);
  reasons.forEach(function (r, i) {
    const cy = m.top + rowH * i + rowH / 2;
    const g = svg("g", { class: "bar", "data-reason": r.code });
    g.appendChild(svg("title", null, r.label + ": " + r.value + " (" + pct(r.value / total) + " of hand-overs)"));
    g.appendChild(svg("text", { x: m.left - 8, y: cy + 4, "text-anchor": "end", "font-size": 12, fill: "#374151" }, truncate(r.label, Math.floor((m.left - 12) / 6.6))));
    g.appendChild(svg("rect", { x: m.left, y: cy - barH / 2, width: Math.max(r.value > 0 ? 2 : 0, x(r.value) - m.left), height: barH, rx: 3, fill: "#f59e0b" }));
    g.appendChild(svg("text", { x: x(r.value) + 6, y: cy + 4, "font-size": 12, fill: "#111827", "font-weight": 600 }, String(r.value)));
    root.appendChild(g);
  });
}

function truncate(s, n) {
  return s.length > n ? s.slice(0, Math.max(1, n - 1)) + "…" : s;
}

function bucketColor(mid) {
  // red (low confidence) -> amber -> green (high)
  const stops = [[0, [220, 38, 38]], [0.5, [245, 158, 11]], [1, [5, 150, 105]]];
  const t = Math.max(0, Math.min(1, mid));
  let a = stops[0];
  let b = stops[stops.length - 1];
  for (let i = 0; i < stops.length - 1; i++) {
    if (t >= stops[i][0] && t <= stops[i + 1][0]) {
      a = stops[i];
      b = stops[i + 1];
      break;
    }
  }
  const f = (t - a[0]) / (b[0] - a[0] || 1);
  const c = a[1].map(function (v, i) {
    return Math.round(v + (b[1][i] - v) * f);
  });
  return "rgb(" + c.join(",") + ")";
}

function drawHistogram(host, buckets) {
  clear(host);
  const width = chartWidth(host, 520);
  const height = 260;
  const m = { top: 18, right: 14, bottom: 44, left: 48 };
  const total = buckets.reduce(function (a, b) { return a + num(b.count); }, 0);
  const root = makeSvg("confidence", width, height, "Histogram of bot reply confidence, " + total + " replies.");
  host.appendChild(root);
  const max = buckets.reduce(function (a, b) { return Math.max(a, num(b.count)); }, 0);
  const y = yAxis(root, m, width, height, max, "Replies");
  const plotW = width - m.left - m.right;
  const lo = buckets.length ? Math.min.apply(null, buckets.map(function (b) { return num(b.from); })) : 0;
  const hi = buckets.length ? Math.max.apply(null, buckets.map(function (b) { return isNum(b.to) ? b.to : 1; })) : 1;
  const span = hi - lo || 1;
  const x = function (v) {
    return m.left + ((v - lo) / span) * plotW;
  };
  const axis = svg("g", { class: "axis axis-x", "font-size": 11, fill: "#6b7280" });
  const edges = [];
  for (const b of buckets) {
    if (edges.indexOf(num(b.from)) === -1) edges.push(num(b.from));
    if (isNum(b.to) && edges.indexOf(b.to) === -1) edges.push(b.to);
  }
  const every = Math.max(1, Math.ceil(edges.length * 36 / plotW));
  edges.sort(function (a, b) { return a - b; }).forEach(function (e, i) {
    if (i % every !== 0 && i !== edges.length - 1) return;
    const xx = Math.round(x(e)) + 0.5;
    axis.appendChild(svg("line", { x1: xx, x2: xx, y1: y(0), y2: y(0) + 4, stroke: "#9ca3af" }));
    axis.appendChild(svg("text", { x: xx, y: y(0) + 17, "text-anchor": "middle" }, formatTick(Math.round(e * 100) / 100)));
  });
  axis.appendChild(svg("text", { x: m.left + plotW / 2, y: height - 6, "text-anchor": "middle", fill: "#4b5563" }, "Confidence"));
  root.appendChild(axis);
  if (!buckets.length || total === 0) {
    emptyNote(root, m.left + plotW / 2, m.top + (height - m.top - m.bottom) / 2, "No bot replies in this period.");
    return;
  }
  for (const b of buckets) {
    const from = num(b.from);
    const to = isNum(b.to) ? b.to : from + 0.1;
    const c = num(b.count);
    const x0 = x(from) + 1;
    const w = Math.max(1, x(to) - x(from) - 2);
    const g = svg("g", { class: "bar" });
    g.appendChild(svg("title", null, pct(from) + "–" + pct(to) + ": " + c + " " + (c === 1 ? "reply" : "replies")));
    g.appendChild(svg("rect", { x: x0, y: y(c), width: w, height: Math.max(0, y(0) - y(c)), fill: bucketColor((from + to) / 2), rx: 2 }));
    if (c > 0 && w >= 18) g.appendChild(svg("text", { x: x0 + w / 2, y: y(c) - 5, "text-anchor": "middle", "font-size": 10, fill: "#374151" }, String(c)));
    root.appendChild(g);
  }
}

function thumb(up) {
  const icon = svg("svg", {
    viewBox: "0 0 24 24", width: "16", height: "16", fill: "none", stroke: "currentColor", "stroke-width": "2",
    "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true", focusable: "false"
  });
  icon.appendChild(svg("path", {
    d: up ? "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3z M7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3"
      : "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3z M17 2h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17"
  }));
  return icon;
}

/** The widget's "Did this solve your problem?" answers: totals and the latest comments. */
function renderFeedback(f) {
  const up = num(f.helpful);
  const down = num(f.not_helpful);
  const total = up + down;
  setText($("feedback-helpful"), String(up));
  setText($("feedback-not-helpful"), String(down));
  $("feedback-bar").classList.toggle("is-empty", total === 0);
  $("feedback-bar-up").style.width = total ? Math.round((up / total) * 100) + "%" : "0";
  setText($("feedback-share"), total ? pct(up / total) + " of " + count(total, "answer", "answers") + " helpful" : "No answers in this period.");
  const list = $("feedback-comments");
  clear(list);
  const comments = Array.isArray(f.comments) ? f.comments : [];
  for (const c of comments) {
    if (!c || typeof c !== "object") continue;
    const when = c.created_at ? new Date(String(c.created_at).replace(/(\.\d{3})\d+/, "$1")) : null;
    const meta = "Conversation #" + String(c.conversation_id) +
      (when && !isNaN(when.getTime()) ? " · " + when.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "");
    list.appendChild(el("li", {
      class: "op-comment", "data-testid": "feedback-comment", "data-helpful": c.helpful ? "true" : "false",
      "data-conversation-id": String(c.conversation_id)
    }, [
      el("span", { class: "op-comment-verdict", "data-helpful": c.helpful ? "true" : "false", title: c.helpful ? "Helpful" : "Not helpful" }, [
        thumb(c.helpful), el("span", { class: "sr-only", text: c.helpful ? "Helpful: " : "Not helpful: " })
      ]),
      el("span", { class: "op-comment-text", "data-testid": "feedback-comment-text", text: String(c.comment || "") }),
      el("span", { class: "op-comment-meta", text: meta })
    ]));
  }
  if (!list.firstChild) list.appendChild(el("li", { class: "op-comments-empty", text: "No comments yet." }));
}

/** One figure card: its value, a line of counts, and the line that says how it was counted. */
function card(id, value, sub) {
  setText($(id), value);
  setText($(id + "-sub"), sub);
}

/** What became of each message: one stacked bar and a list whose percentages add up to 100%. */
function renderOutcomes(outcomes) {
  const shares = Array.isArray(outcomes.shares) ? outcomes.shares : [];
  const percents = wholePercents(shares.map(function (s) { return num(s.count); }));
  const bar = $("outcome-bar");
  const list = $("outcome-list");
  clear(bar);
  clear(list);
  shares.forEach(function (s, i) {
    const color = OUTCOMES[s.outcome] ? OUTCOMES[s.outcome].color : "#6b7280";
    const label = outcomeLabel(s);
    if (num(s.count) > 0) {
      bar.appendChild(el("span", { style: "flex-grow:" + num(s.count) + ";--c:" + color, title: label + ": " + percents[i] + "%" }));
    }
    list.appendChild(el("li", {
      class: "op-outcome", "data-testid": "outcome-share", "data-outcome": s.outcome, "data-reason": s.reason || ""
    }, [
      el("span", { class: "op-outcome-swatch", style: "--c:" + color, "aria-hidden": "true" }),
      el("span", { class: "op-outcome-label", text: label }),
      el("span", { class: "op-outcome-count", text: String(num(s.count)) }),
      el("span", { class: "op-outcome-share", "data-testid": "outcome-percent", text: percents[i] + "%" })
    ]));
  });
  if (!shares.length) list.appendChild(el("li", { class: "op-comments-empty", text: "No messages in this period." }));
  setText($("outcome-total"), count(num(outcomes.total), "message", "messages") + " = 100%");
}

/** Every figure per template version, newest first; percentages of a row's own messages. */
function renderVersions(versions) {
  const body = $("version-rows");
  clear(body);
  for (const v of versions) {
    const o = v.outcomes || {};
    const shares = Array.isArray(o.shares) ? o.shares : [];
    const total = num(o.total);
    const sumOf = function (outcome) {
      return shares.filter(function (s) { return s.outcome === outcome; }).reduce(function (a, s) { return a + num(s.count); }, 0);
    };
    const counts = OUTCOME_ORDER.map(sumOf);
    const percents = wholePercents(counts);
    const r = v.resolution || {};
    const sat = v.satisfaction || {};
    const first = v.first_answer_s || {};
    const cells = [
      versionLabel(v), String(total),
      percents[0] + "% (" + counts[0] + ")", percents[1] + "% (" + counts[1] + ")",
      percents[2] + percents[3] + "% (" + (counts[2] + counts[3]) + ")",
      pct(r.rate) + " (" + num(r.resolved) + "/" + (num(r.resolved) + num(r.unresolved)) + ")",
      pct(sat.share) + " (" + num(sat.helpful) + "/" + num(sat.total) + ")",
      duration(first.median) + " / " + duration(first.p90),
      reasonsText(v.handovers_by_reason)
    ];
    body.appendChild(el("tr", { "data-testid": "version-row", "data-template": v.template || "", "data-version": v.version === null ? "" : String(v.version) },
      cells.map(function (c, i) { return el(i === 0 ? "th" : "td", i === 0 ? { scope: "row", text: c } : { text: c }); })));
  }
  if (!versions.length) body.appendChild(el("tr", null, [el("td", { colspan: "9", class: "muted", text: "No messages in this period." })]));
}

export function statsView(api) {
  const state = { days: 14, data: null, seq: 0, resizeTimer: 0, visible: false };

  async function load() {
    const seq = ++state.seq;
    setStatus($("stats-status"), "Loading…", "busy");
    $("view-stats").setAttribute("aria-busy", "true");
    try {
      const data = await api("/operator/api/stats?days=" + encodeURIComponent(state.days));
      if (seq !== state.seq) return;
      state.data = data;
      render();
      setStatus($("stats-status"), "Updated " + new Date().toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }));
    } catch (e) {
      if (seq !== state.seq) return;
      setStatus($("stats-status"), "Not loaded", "bad");
      showError("Statistics could not be loaded: " + e.message);
    } finally {
      if (seq === state.seq) $("view-stats").setAttribute("aria-busy", "false");
    }
  }

  function render() {
    const s = state.data;
    if (!s) return;
    const days = Array.isArray(s.days) ? s.days : [];
    const outcomes = s.outcomes && typeof s.outcomes === "object" ? s.outcomes : { total: 0, shares: [] };
    const total = num(outcomes.total);
    const shares = Array.isArray(outcomes.shares) ? outcomes.shares : [];
    const shown = wholePercents(shares.map(function (x) { return num(x.count); }));
    const answeredAt = shares.findIndex(function (x) { return x.outcome === "answered"; });
    const answered = answeredAt < 0 ? 0 : num(shares[answeredAt].count);
    const r = s.resolution || {};
    const sat = s.satisfaction || {};
    const first = s.first_answer_s || {};
    const reply = s.reply_time_s || {};
    const hours = num(s.resolution_window_hours) || 24;
    card("stat-messages", String(total), days.length ? "≈ " + round1(total / days.length) + " a day over " + count(days.length, "day", "days") : "");
    card("stat-answered-share", total ? (answeredAt < 0 ? 0 : shown[answeredAt]) + "%" : "—", answered + " of " + count(total, "message", "messages"));
    card("stat-resolution", pct(r.rate), num(r.resolved) + " of " + count(num(r.resolved) + num(r.unresolved), "episode", "episodes") +
      (num(r.undecided) ? " · " + num(r.undecided) + " answered less than " + hours + " h ago, not counted yet" : ""));
    card("stat-satisfaction", pct(sat.share), num(sat.helpful) + " of " + count(num(sat.total), "verdict", "verdicts") + " helpful");
    card("stat-first-answer", duration(first.median), "p90 " + duration(first.p90) + " · " + count(num(first.count), "episode", "episodes"));
    card("stat-reply-time", duration(reply.p50), "p95 " + duration(reply.p95) + " · " + count(num(reply.count), "reply", "replies"));
    setText($("stat-resolution-how"), "An episode the bot answered with no hand-over and no new message within " + hours +
      " h, or that got a thumbs up; of the episodes decided so far.");
    renderOutcomes(outcomes);
    renderVersions(Array.isArray(s.versions) ? s.versions : []);
    renderFeedback(s.feedback && typeof s.feedback === "object" ? s.feedback : {});
    drawCharts();
  }

  function drawCharts() {
    const s = state.data;
    if (!s) return;
    const days = Array.isArray(s.days) ? s.days : [];
    drawMessages($("chart-messages"), days);
    dataTable($("data-messages"), ["Day", "Messages"].concat(OUTCOME_ORDER.map(function (k) { return OUTCOMES[k].label; })),
      days.map(function (d) {
        return [dayLabel(d.date, true), num(d.messages)].concat(OUTCOME_ORDER.map(function (k) { return num(d[k]); }));
      }));
    const reasons = Object.keys(s.handovers_by_reason || {}).map(function (k) {
      return { code: k, label: reasonLabel(k), value: num(s.handovers_by_reason[k]) };
    }).sort(function (a, b) {
      return b.value - a.value || a.label.localeCompare(b.label);
    });
    drawReasons($("chart-reasons"), reasons);
    dataTable($("data-reasons"), ["Reason", "Hand-overs"], reasons.map(function (r) {
      return [r.label, r.value];
    }));
    const buckets = Array.isArray(s.confidence_histogram) ? s.confidence_histogram : [];
    drawHistogram($("chart-confidence"), buckets);
    dataTable($("data-confidence"), ["Confidence", "Replies"], buckets.map(function (b) {
      return [pct(b.from) + "–" + pct(b.to), num(b.count)];
    }));
  }

  $("stats-days").addEventListener("change", function () {
    state.days = parseInt($("stats-days").value, 10) || 14;
    load();
  });
  $("stats-refresh").addEventListener("click", load);
  window.addEventListener("resize", function () {
    clearTimeout(state.resizeTimer);
    state.resizeTimer = setTimeout(function () {
      if (state.visible && state.data) drawCharts();
    }, 150);
  });

  return {
    /** The view was opened (load and draw) or left (stop redrawing on resize). */
    show: function (visible, focus) {
      state.visible = visible;
      if (!visible) return;
      load();
      if (focus) $("stats-heading").focus();
    }
  };
}

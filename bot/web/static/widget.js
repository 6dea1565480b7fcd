/*
 * Snapdesk support widget.
 *
 * Embed on any page with one tag:
 *   <script src="https://support.example.com/widget.js" defer
 *           data-server="https://support.example.com" data-title="Acme Support"
 *           data-lang="auto" data-open="false" data-position="right"></script>
 *
 * Everything renders inside an open Shadow DOM root attached to <div id="snapdesk-widget">.
 * Text from users, the model, agents and the server is only ever inserted as text nodes.
 * Debug/test handle: window.SnapdeskWidget = { open(), close(), state() }.
 */
(function () {
  "use strict";

  if (window.SnapdeskWidget || document.getElementById("snapdesk-widget")) return;

  // ---------------------------------------------------------------------------------------
  // Configuration from the embedding <script> tag
  // ---------------------------------------------------------------------------------------
  const script = document.currentScript || document.querySelector('script[src*="widget.js"]');
  const data = (script && script.dataset) || {};

  function httpUrl(raw, base) {
    try {
      const u = new URL(raw, base);
      return u.protocol === "http:" || u.protocol === "https:" ? u : null;
    } catch (_) {
      return null;
    }
  }

  const SERVER = (function () {
    const explicit = data.server ? httpUrl(data.server, location.href) : null;
    if (explicit) return (explicit.origin + explicit.pathname).replace(/\/+$/, "");
    const src = script && script.src ? httpUrl(script.src, location.href) : null;
    if (src) return src.origin;
    return location.origin;
  })();
  const SERVER_ORIGIN = new URL(SERVER).origin;
  const TOKEN_KEY = "snapdesk.visitor." + SERVER_ORIGIN;

  const LANG = (function () {
    const v = String(data.lang || "auto").toLowerCase();
    if (v === "zh" || v === "en") return v;
    const nav = String((navigator.languages && navigator.languages[0]) || navigator.language || "");
    return nav.toLowerCase().startsWith("zh") ? "zh" : "en";
  })();
  const POSITION = String(data.position || "right").toLowerCase() === "left" ? "left" : "right";
  const START_OPEN = String(data.open || "false").toLowerCase() === "true";

  // ---------------------------------------------------------------------------------------
  // Strings
  // ---------------------------------------------------------------------------------------
  const I18N = {
    en: {
      launcherOpen: "Open support chat",
      launcherClose: "Close support chat",
      unread: "{n} new",
      defaultTitle: "Support",
      close: "Close chat",
      conversation: "Conversation",
      welcome: "Hi! How can we help? Describe the problem — you can attach, paste (Ctrl+V) or drop a screenshot of an error, a bill or an order.",
      inputLabel: "Your message",
      placeholder: "Write a message…",
      attach: "Attach screenshots",
      send: "Send message",
      you: "You",
      assistant: "Assistant",
      sources: "Sources",
      agentDefault: "Agent",
      statusBot: "Assistant · usually answers in seconds",
      statusWaiting: "Waiting for a person…",
      statusClaimed: "{name} (support)",
      anAgent: "An agent",
      statusResolved: "Conversation resolved — write again any time",
      typing: "The assistant is typing",
      lineClaimed: "{name} from our support team has joined the conversation.",
      lineBot: "You're back with the assistant. Ask me anything, or ask for a person again at any time.",
      lineResolved: "This conversation is marked as resolved. Write here any time if you need more help.",
      menu: "More options",
      talkToPerson: "Talk to a person",
      talkToPersonHint: "An agent from our team will answer here",
      alreadyWithPerson: "A person is already looking after this conversation.",
      handoverFailed: "We couldn't reach a person just now. Please try again in a moment.",
      fbQuestion: "Did this solve your problem?",
      fbYes: "Yes, it solved my problem",
      fbNo: "No, it didn't solve my problem",
      fbCommentLabel: "Anything to add? (optional)",
      fbCommentPlaceholder: "Tell us what worked or what was missing (optional)",
      fbSend: "Send feedback",
      fbSending: "Sending…",
      fbThanks: "Thanks for your feedback.",
      fbFailed: "Your feedback could not be sent. Please try again.",
      sending: "Sending…",
      preparing: "Preparing image…",
      reconnecting: "Reconnecting…",
      attachments: "Screenshots to send",
      previewAlt: "Screenshot {n}",
      removeImage: "Remove image {n}",
      openImage: "Open screenshot {n} in a new tab",
      drop: "Drop screenshots here",
      charsLeft: "{n} characters left",
      failed: "Not delivered.",
      retry: "Retry",
      retryLabel: "Retry sending this message",
      notImage: "“{name}” is not an image. Only screenshots and photos can be attached.",
      tooManyLocal: "You can attach up to {max} images per message.",
      cannotShrink: "“{name}” is too large (over {size}) and could not be made smaller. Please crop it or send a smaller screenshot.",
      unreadable: "“{name}” could not be read as an image.",
      emptyFile: "“{name}” is empty.",
      textTooLongLocal: "Messages can be at most {max} characters.",
      sessionFailed: "Can't reach support right now. Please check your connection and try again.",
      network: "Connection problem: your message was not delivered. Use Retry to send it again.",
      server: "Something went wrong on our side. Please try again in a moment.",
      generic: "The message could not be sent.",
      err_too_large: "That message is too large. Please send smaller screenshots.",
      err_too_many_images: "Too many images: please send at most {max} per message.",
      err_text_too_long: "That message is too long: please keep it under {max} characters.",
      err_rate_limited: "You're sending messages too quickly. Please wait {s} seconds and try again.",
      err_rate_limited_nos: "You're sending messages too quickly. Please wait a moment and try again.",
      err_bad_request: "The message could not be sent (the request was not valid).",
      err_empty: "Nothing to send: type a message or attach a screenshot (an attached image may be empty).",
      err_unsupported_format: "That file is not an image we can read. Please send a PNG, JPEG, WebP, GIF or BMP screenshot.",
      err_too_many_pixels: "That image has too many pixels. Please send a smaller screenshot.",
      err_aspect_ratio: "That image is too long and narrow. Please send a regular screenshot, or split it into parts.",
      err_corrupt: "That image seems to be damaged or incomplete. Please send it again.",
      err_origin_not_allowed: "This site may not use the support chat.",
      err_bad_token: "Your chat session has expired. Please reload the page."
    },
    zh: {
      launcherOpen: "打开客服对话",
      launcherClose: "关闭客服对话",
      unread: "{n} 条新消息",
      defaultTitle: "在线客服",
      close: "关闭对话",
      conversation: "对话记录",
      welcome: "您好！请问有什么可以帮您？请描述遇到的问题——可以上传、粘贴（Ctrl+V）或拖入报错弹窗、账单或订单页面的截图。",
      inputLabel: "输入消息",
      placeholder: "输入消息…",
      attach: "上传截图",
      send: "发送消息",
      you: "我",
      assistant: "助手",
      sources: "参考资料",
      agentDefault: "客服",
      statusBot: "智能助手 · 通常几秒内回复",
      statusWaiting: "正在等待人工客服…",
      statusClaimed: "{name}（客服）",
      anAgent: "客服",
      statusResolved: "对话已结束，如有问题可随时再次留言",
      typing: "助手正在输入",
      lineClaimed: "客服 {name} 已加入对话。",
      lineBot: "您已回到智能助手。有问题请随时提问，也可以随时再次转人工。",
      lineResolved: "此对话已标记为已解决。如需更多帮助，请随时在这里留言。",
      menu: "更多选项",
      talkToPerson: "转人工客服",
      talkToPersonHint: "我们的客服人员会在这里回复您",
      alreadyWithPerson: "已有客服人员在处理此对话。",
      handoverFailed: "暂时无法转接人工客服，请稍后再试。",
      fbQuestion: "您的问题解决了吗？",
      fbYes: "已解决",
      fbNo: "未解决",
      fbCommentLabel: "还有什么想补充的吗？（选填）",
      fbCommentPlaceholder: "告诉我们哪里有帮助、哪里还不够（选填）",
      fbSend: "提交反馈",
      fbSending: "提交中…",
      fbThanks: "感谢您的反馈。",
      fbFailed: "反馈提交失败，请重试。",
      sending: "发送中…",
      preparing: "正在处理图片…",
      reconnecting: "正在重新连接…",
      attachments: "待发送的截图",
      previewAlt: "第 {n} 张截图",
      removeImage: "移除第 {n} 张图片",
      openImage: "在新标签页中打开第 {n} 张截图",
      drop: "将截图拖放到这里",
      charsLeft: "还可输入 {n} 个字符",
      failed: "发送失败。",
      retry: "重试",
      retryLabel: "重新发送这条消息",
      notImage: "“{name}”不是图片，只能上传截图或照片。",
      tooManyLocal: "每条消息最多可附带 {max} 张图片。",
      cannotShrink: "“{name}”太大（超过 {size}），且无法压缩到限制以内。请裁剪后或发送更小的截图。",
      unreadable: "无法读取图片“{name}”。",
      emptyFile: "“{name}”是空文件。",
      textTooLongLocal: "每条消息最多 {max} 个字符。",
      sessionFailed: "暂时无法连接客服，请检查网络后重试。",
      network: "网络异常，消息未送达。请点击“重试”重新发送。",
      server: "服务暂时出现问题，请稍后再试。",
      generic: "消息发送失败。",
      err_too_large: "消息太大，请发送小一些的截图。",
      err_too_many_images: "图片太多：每条消息最多 {max} 张。",
      err_text_too_long: "消息太长：请控制在 {max} 个字符以内。",
      err_rate_limited: "发送太频繁，请等待 {s} 秒后再试。",
      err_rate_limited_nos: "发送太频繁，请稍后再试。",
      err_bad_request: "消息无法发送（请求无效）。",
      err_empty: "没有可发送的内容：请输入文字或附上截图（所附图片可能是空的）。",
      err_unsupported_format: "无法识别这个文件。请发送 PNG、JPEG、WebP、GIF 或 BMP 格式的截图。",
      err_too_many_pixels: "图片分辨率太高，请发送小一些的截图。",
      err_aspect_ratio: "图片过于细长，请发送普通截图，或分成几张发送。",
      err_corrupt: "这张图片似乎已损坏或不完整，请重新发送。",
      err_origin_not_allowed: "此网站无法使用在线客服。",
      err_bad_token: "对话已过期，请刷新页面。"
    }
  };
  const STR = I18N[LANG];

  function t(key, vars) {
    let s = STR[key] !== undefined ? STR[key] : I18N.en[key] !== undefined ? I18N.en[key] : key;
    if (vars) {
      s = s.replace(/\{(\w+)\}/g, function (m, k) {
        return Object.prototype.hasOwnProperty.call(vars, k) ? String(vars[k]) : m;
      });
    }
    return s;
  }

  const TITLE = (data.title && String(data.title).trim()) || t("defaultTitle");

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------
  const cfg = { max_images: 4, max_image_bytes: 20 * 1024 * 1024, max_text_chars: 4000, demo: false, banner: null };
  const state = {
    open: false,
    status: "bot",
    statusChanges: 0, // how often the header status changed: a stale snapshot must not undo a live change
    agent: null,
    token: readToken(),
    unread: 0,
    sending: 0,
    preparing: 0,
    reconnecting: false,
    historyLoaded: false
  };
  const byId = new Map(); // server message id -> element
  const outbox = new Map(); // client_message_id -> entry (user messages not yet confirmed by the server)
  const streams = new Map(); // reply_to -> streaming element
  const finished = new Set(); // reply_to ids whose final message is shown
  const typing = { pending: new Set(), since: 0, timer: null }; // visitor message ids the bot is working on
  const TYPING_MAX_MS = 120000;
  const feedback = { state: "hidden", helpful: null, comment: "" }; // hidden | asking | sending | done
  const FEEDBACK_MAX_CHARS = 1000;
  let pending = []; // attachments in the composer: {blob, url, name}

  function readToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || null;
    } catch (_) {
      return null;
    }
  }

  function writeToken(value) {
    const changed = value !== state.token;
    state.token = value || null;
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage disabled: keep the token in memory only */
    }
    return changed;
  }

  // ---------------------------------------------------------------------------------------
  // DOM helpers: a classic script on customers' pages cannot import the consoles' module, so
  // el, parseTime and readJson here match console-common.js, and httpUrl and fillText match
  // agent.js, name for name.
  // ---------------------------------------------------------------------------------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === null || v === undefined || v === false) continue;
        if (k === "text") node.textContent = String(v);
        else if (k === "class") node.className = v;
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    if (children) for (const c of children) if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  const ICONS = {
    chat: "M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.5.4-1.3.1-1.3-.6V16A2.5 2.5 0 0 1 4 13.5z",
    close: "M6 6l12 12M18 6L6 18",
    chevron: "M6 9l6 6 6-6",
    clip: "M20.5 11.5l-8.2 8.2a5 5 0 0 1-7.1-7.1l8.5-8.5a3.4 3.4 0 0 1 4.8 4.8l-8.5 8.5a1.7 1.7 0 0 1-2.4-2.4l7.8-7.8",
    send: "M4.5 12L3 4.5l18 7.5-18 7.5z M4.5 12H12",
    image: "M4 5h16v14H4z M4 16l5-5 4 4 3-3 4 4 M15.5 9.5a1 1 0 1 0 0-.01",
    more: "M12 7a1.75 1.75 0 1 0 0-3.5 1.75 1.75 0 0 0 0 3.5z M12 13.75a1.75 1.75 0 1 0 0-3.5 1.75 1.75 0 0 0 0 3.5z M12 20.5a1.75 1.75 0 1 0 0-3.5 1.75 1.75 0 0 0 0 3.5z",
    person: "M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8z M4.5 20.5a7.5 7.5 0 0 1 15 0",
    headset: "M4 14v-2a8 8 0 0 1 16 0v2 M4 14a2 2 0 0 1 2-2h1v6H6a2 2 0 0 1-2-2z M20 14a2 2 0 0 0-2-2h-1v6h1a2 2 0 0 0 2-2z M17 18c0 1.7-2 3-5 3",
    up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3z M7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
    down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3z M17 2h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
    check: "M5 12.5l4.5 4.5L19 7.5"
  };

  function icon(name, filled) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", ICONS[name]);
    if (filled) {
      path.setAttribute("fill", "currentColor");
    } else {
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", "currentColor");
      path.setAttribute("stroke-width", "2");
      path.setAttribute("stroke-linecap", "round");
      path.setAttribute("stroke-linejoin", "round");
    }
    svg.appendChild(path);
    return svg;
  }

  function formatBytes(n) {
    if (n >= 1024 * 1024) return (Math.round((n / (1024 * 1024)) * 10) / 10).toString() + " MB";
    if (n >= 1024) return Math.round(n / 1024) + " KB";
    return n + " B";
  }

  function parseTime(iso) {
    if (!iso) return null;
    // Python writes microseconds; trim the fraction to milliseconds for every browser.
    const s = String(iso).replace(/(\.\d{3})\d+/, "$1");
    const d = new Date(s);
    return isNaN(d.getTime()) ? null : d;
  }

  function formatTime(d) {
    if (!d) return "";
    try {
      return d.toLocaleString(LANG === "zh" ? "zh-CN" : undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (_) {
      return d.toLocaleString();
    }
  }

  function newClientId() {
    try {
      if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    } catch (_) {
      /* not a secure context */
    }
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }

  /** A server image URL, only when it points at the configured server's origin. */
  function safeServerUrl(raw) {
    if (typeof raw !== "string" || !raw) return null;
    const u = httpUrl(raw, SERVER + "/");
    if (!u || u.origin !== SERVER_ORIGIN) return null;
    return u.href;
  }

  /** Text with http(s) links made clickable; every piece is a text node. */
  function fillText(node, text) {
    node.textContent = "";
    const s = String(text == null ? "" : text);
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
      const a = el("a", { href: u.href, target: "_blank", rel: "noopener noreferrer nofollow" });
      a.textContent = href;
      node.appendChild(a);
      last = m.index + href.length;
      re.lastIndex = last;
    }
    if (last < s.length) node.appendChild(document.createTextNode(s.slice(last)));
  }

  // ---------------------------------------------------------------------------------------
  // Styles
  // ---------------------------------------------------------------------------------------
  const CSS = `
:host { all: initial; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.root {
  --sd-accent: #4f46e5; --sd-accent-2: #7c3aed; --sd-accent-dark: #4338ca;
  --sd-text: #111827; --sd-muted: #6b7280; --sd-border: #e5e7eb; --sd-bg: #ffffff; --sd-soft: #f8fafc;
  --sd-ring: #2563eb;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", "Noto Sans SC", sans-serif;
  font-size: 14px; line-height: 1.45; color: var(--sd-text);
  -webkit-font-smoothing: antialiased; text-align: left; direction: ltr;
}
button { font: inherit; color: inherit; }
.sr-only {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
:focus { outline: none; }
:focus-visible { outline: 2px solid var(--sd-ring); outline-offset: 2px; }

.launcher, .panel { pointer-events: auto; }
.launcher {
  position: fixed; bottom: 20px; right: 20px; z-index: 2147483000;
  width: 60px; height: 60px; border-radius: 50%; border: 0; padding: 0; cursor: pointer;
  display: flex; align-items: center; justify-content: center;
  background: linear-gradient(135deg, var(--sd-accent), var(--sd-accent-2)); color: #fff;
  box-shadow: 0 8px 24px rgba(79, 70, 229, .38), 0 2px 6px rgba(17, 24, 39, .18);
  transition: transform .16s ease, box-shadow .16s ease;
}
.pos-left .launcher { right: auto; left: 20px; }
.launcher:hover { transform: translateY(-2px) scale(1.04); box-shadow: 0 12px 28px rgba(79, 70, 229, .45), 0 3px 8px rgba(17, 24, 39, .2); }
.launcher:active { transform: scale(.97); }
.launcher:focus-visible { outline: 3px solid var(--sd-ring); outline-offset: 3px; }
.launcher svg { width: 28px; height: 28px; transition: transform .2s ease, opacity .2s ease; }
.launcher .ic-close { position: absolute; opacity: 0; transform: rotate(-90deg); }
.is-open .launcher .ic-chat { opacity: 0; transform: rotate(90deg); }
.is-open .launcher .ic-close { opacity: 1; transform: none; }
.badge {
  position: absolute; top: -2px; right: -2px; min-width: 20px; height: 20px; padding: 0 6px;
  border-radius: 10px; background: #ef4444; color: #fff; font-size: 11px; font-weight: 700;
  line-height: 20px; text-align: center; box-shadow: 0 0 0 2px #fff;
}

.panel {
  position: fixed; bottom: 92px; right: 20px; z-index: 2147483000;
  width: 384px; height: 640px; max-height: calc(100vh - 112px);
  display: flex; flex-direction: column; overflow: hidden;
  background: var(--sd-bg); border-radius: 18px;
  box-shadow: 0 16px 48px rgba(17, 24, 39, .22), 0 2px 8px rgba(17, 24, 39, .08);
  animation: sd-in .2s ease-out; transform-origin: bottom right;
}
.pos-left .panel { right: auto; left: 20px; transform-origin: bottom left; }
@keyframes sd-in { from { opacity: 0; transform: translateY(12px) scale(.98); } to { opacity: 1; transform: none; } }

.header {
  flex: none; display: flex; align-items: center; gap: 12px; padding: 16px 14px 16px 18px;
  background: linear-gradient(135deg, var(--sd-accent), var(--sd-accent-2)); color: #fff;
}
.avatar {
  flex: none; width: 40px; height: 40px; border-radius: 50%; display: flex; align-items: center; justify-content: center;
  background: rgba(255, 255, 255, .18); box-shadow: inset 0 0 0 1px rgba(255, 255, 255, .25);
}
.avatar svg { width: 22px; height: 22px; }
.head-text { flex: 1; min-width: 0; }
.title { margin: 0; font-size: 16px; font-weight: 650; line-height: 1.25; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.status-line { margin: 3px 0 0; font-size: 12.5px; line-height: 1.3; opacity: .92; display: flex; align-items: center; gap: 6px; min-width: 0; }
.status-line .dot { flex: none; width: 8px; height: 8px; border-radius: 50%; background: #34d399; box-shadow: 0 0 0 2px rgba(255,255,255,.25); }
.st-waiting .status-line .dot { background: #fbbf24; }
.st-claimed .status-line .dot { background: #60a5fa; }
.st-resolved .status-line .dot { background: #d1d5db; }
.status-text { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.activity { flex: none; font-style: italic; opacity: .85; }
.activity::before { content: "·"; margin-right: 6px; font-style: normal; }
.icon-btn {
  flex: none; width: 36px; height: 36px; border-radius: 10px; border: 0; padding: 0; cursor: pointer;
  display: flex; align-items: center; justify-content: center; background: transparent;
}
.icon-btn svg { width: 20px; height: 20px; }
.header .icon-btn { color: #fff; }
.header .icon-btn:hover { background: rgba(255, 255, 255, .16); }
.header :focus-visible { outline-color: #fff; }

.banner {
  flex: none; padding: 8px 16px; font-size: 12.5px; line-height: 1.4;
  background: #fffbeb; color: #92400e; border-bottom: 1px solid #fde68a;
}

.messages {
  flex: 1; min-height: 0; overflow-y: auto; overscroll-behavior: contain;
  padding: 18px 16px 10px; display: flex; flex-direction: column; gap: 10px; background: var(--sd-soft);
}
.messages:focus-visible { outline-offset: -3px; }

.msg { display: flex; flex-direction: column; max-width: 84%; min-width: 0; }
.msg.left { align-self: flex-start; align-items: flex-start; }
.msg.right { align-self: flex-end; align-items: flex-end; }
.author { font-size: 11.5px; font-weight: 600; color: var(--sd-muted); margin: 0 0 3px 10px; }
.msg.is-agent .author { color: #047857; }
.bubble {
  padding: 9px 13px; border-radius: 18px; overflow-wrap: anywhere; word-break: break-word; min-width: 0; max-width: 100%;
}
.left .bubble { background: #fff; border: 1px solid var(--sd-border); border-bottom-left-radius: 6px; box-shadow: 0 1px 2px rgba(17,24,39,.04); }
.right .bubble { background: linear-gradient(135deg, var(--sd-accent), var(--sd-accent-2)); color: #fff; border-bottom-right-radius: 6px; }
.msg.is-agent .bubble { background: #ecfdf5; border-color: #a7f3d0; }
.text { white-space: pre-wrap; }
.text:empty { display: none; }
.text a { color: inherit; text-decoration: underline; text-underline-offset: 2px; }
.right .text a:focus-visible { outline-color: #fff; }
.sources { margin: 8px 0 0; padding: 6px 0 0; border-top: 1px solid rgba(0,0,0,.08); font-size: 12px; }
.sources p { margin: 0 0 2px; font-weight: 600; }
.sources ol { margin: 0; padding-left: 18px; }
.sources a { color: inherit; text-decoration: underline; overflow-wrap: anywhere; }
.imgs { display: flex; flex-wrap: wrap; gap: 6px; margin: 2px 0 6px; }
.imgs:last-child { margin-bottom: 2px; }
.imgs:empty { display: none; }
.imgs img, .imgs a { display: block; }
.imgs img {
  max-width: 220px; max-height: 200px; border-radius: 12px; object-fit: cover; object-position: top center;
  background: #fff; box-shadow: 0 0 0 1px rgba(15, 23, 42, .1);
}
.imgs.many img { width: 100px; height: 100px; }
.img-missing {
  display: flex; align-items: center; justify-content: center; width: 100px; height: 72px; border-radius: 12px;
  background: rgba(148, 163, 184, .18); color: #94a3b8;
}
.img-missing svg { width: 26px; height: 26px; }
.imgs a { border-radius: 12px; }
.right .imgs a:focus-visible { outline-color: var(--sd-ring); }
.msg.is-sending .bubble { opacity: .72; }
.msg.is-failed .bubble { background: #fff; color: var(--sd-text); border: 1px solid #fca5a5; }
.meta { display: flex; align-items: center; gap: 8px; margin: 4px 4px 0; font-size: 12px; color: #b91c1c; }
.retry {
  border: 1px solid #fca5a5; background: #fff; color: #b91c1c; border-radius: 999px; padding: 2px 10px;
  font-size: 12px; font-weight: 600; cursor: pointer;
}
.retry:hover { background: #fef2f2; }

.msg[data-streaming="true"] .text:empty { display: block; min-height: 1.45em; }
.msg[data-streaming="true"] .text::after {
  content: ""; display: inline-block; width: 7px; height: 1.05em; margin-left: 2px; vertical-align: -0.17em;
  border-radius: 1px; background: var(--sd-accent); opacity: .55; animation: sd-blink 1s steps(2, start) infinite;
}
@keyframes sd-blink { to { visibility: hidden; } }

.msg.center { align-self: center; align-items: center; max-width: 92%; }
.msg.center .bubble {
  background: transparent; border: 0; padding: 2px 8px; color: var(--sd-muted); font-size: 12.5px; text-align: center;
}
.notice {
  align-self: center; max-width: 92%; padding: 8px 12px; border-radius: 12px; font-size: 12.5px; line-height: 1.4;
  text-align: center; color: var(--sd-muted); overflow-wrap: anywhere;
}
.notice.error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
.welcome .bubble { background: #fff; }

.previews {
  flex: none; display: flex; gap: 10px; padding: 12px 14px 2px; overflow-x: auto; background: var(--sd-bg);
  border-top: 1px solid var(--sd-border);
}
.preview { position: relative; flex: none; width: 60px; height: 60px; margin-top: 4px; }
.preview img { width: 60px; height: 60px; object-fit: cover; object-position: top center; border-radius: 10px; border: 1px solid var(--sd-border); display: block; }
.remove {
  position: absolute; top: -7px; right: -7px; width: 22px; height: 22px; border-radius: 50%; padding: 0;
  border: 2px solid #fff; background: #374151; color: #fff; cursor: pointer;
  display: flex; align-items: center; justify-content: center;
}
.remove svg { width: 12px; height: 12px; }
.remove:hover { background: #111827; }

.composer {
  flex: none; display: flex; align-items: flex-end; gap: 6px; padding: 10px 12px 12px;
  background: var(--sd-bg); border-top: 1px solid var(--sd-border);
}
.previews:not([hidden]) + .composer { border-top: 0; }
.field { flex: 1; min-width: 0; display: flex; flex-direction: column; }
textarea {
  display: block; width: 100%; min-height: 42px; max-height: 140px; resize: none; margin: 0;
  padding: 10px 13px; border: 1px solid #d1d5db; border-radius: 14px; background: #fff; color: var(--sd-text);
  font: inherit; font-size: 14px; line-height: 1.45; overflow-y: auto;
  transition: border-color .15s, box-shadow .15s;
}
textarea::placeholder { color: #9ca3af; }
textarea:focus { border-color: var(--sd-accent); box-shadow: 0 0 0 3px rgba(79, 70, 229, .18); outline: none; }
.counter { font-size: 11.5px; color: var(--sd-muted); margin: 4px 4px 0; text-align: right; }
.counter.over { color: #b91c1c; }
.attach { color: var(--sd-muted); width: 42px; height: 42px; border-radius: 12px; }
.attach:hover { background: #f3f4f6; color: var(--sd-text); }
.send {
  flex: none; width: 42px; height: 42px; border-radius: 50%; border: 0; padding: 0; cursor: pointer;
  display: flex; align-items: center; justify-content: center;
  background: var(--sd-accent); color: #fff; transition: background .15s, transform .1s;
}
.send svg { width: 20px; height: 20px; }
.send:hover:not(:disabled) { background: var(--sd-accent-dark); }
.send:active:not(:disabled) { transform: scale(.94); }
.send:disabled { background: #e5e7eb; color: #9ca3af; cursor: not-allowed; }

.dropzone {
  position: absolute; inset: 8px; z-index: 5; border-radius: 14px; border: 2px dashed var(--sd-accent);
  background: rgba(238, 242, 255, .94); color: var(--sd-accent-dark); font-weight: 600; font-size: 15px;
  display: none; flex-direction: column; gap: 8px; align-items: center; justify-content: center; pointer-events: none;
}
.dropzone svg { width: 34px; height: 34px; }
.panel.dragging .dropzone { display: flex; }

/* Menu in the header */
.menu-wrap { position: relative; flex: none; }
.header .icon-btn[aria-expanded="true"] { background: rgba(255, 255, 255, .2); }
.menu {
  position: absolute; top: calc(100% + 6px); right: 0; z-index: 6; min-width: 232px; padding: 6px;
  background: #fff; color: var(--sd-text); border-radius: 12px; border: 1px solid var(--sd-border);
  box-shadow: 0 12px 32px rgba(17, 24, 39, .18), 0 2px 6px rgba(17, 24, 39, .08); animation: sd-in .12s ease-out;
  transform-origin: top right;
}
.menu-item {
  display: flex; align-items: flex-start; gap: 10px; width: 100%; padding: 9px 10px; border: 0; border-radius: 8px;
  background: transparent; text-align: left; cursor: pointer; font-size: 14px; line-height: 1.3;
}
.menu-item svg { flex: none; width: 20px; height: 20px; margin-top: 1px; color: var(--sd-accent); }
.menu-item:hover:not(:disabled), .menu-item:focus-visible { background: #f3f4f6; outline: none; }
.menu-item:disabled { cursor: not-allowed; color: #9ca3af; }
.menu-item:disabled svg { color: #c4c8d0; }
.menu-label { display: block; font-weight: 600; }
.menu-hint { display: block; margin-top: 2px; font-size: 12px; color: var(--sd-muted); font-weight: 400; }
.menu-item:disabled .menu-hint { color: #b6bac2; }

/* Typing indicator: three dots in a bot bubble */
.typing .bubble { display: flex; align-items: center; gap: 5px; padding: 13px 15px; }
.tdot { width: 7px; height: 7px; border-radius: 50%; background: #9ca3af; animation: sd-typing 1.2s ease-in-out infinite; }
.tdot:nth-child(2) { animation-delay: .16s; }
.tdot:nth-child(3) { animation-delay: .32s; }
@keyframes sd-typing { 0%, 60%, 100% { transform: translateY(0); opacity: .4; } 30% { transform: translateY(-4px); opacity: 1; } }

/* Status lines: who has the conversation now */
.msg.is-status { align-self: stretch; max-width: none; align-items: stretch; }
.sysline {
  display: flex; align-items: center; gap: 10px; margin: 2px 4px; color: var(--sd-muted); font-size: 12px; line-height: 1.35;
  text-align: center;
}
.sysline::before, .sysline::after { content: ""; flex: 1 1 16px; min-width: 16px; height: 1px; background: var(--sd-border); }
.sysline .text { flex: 0 1 auto; max-width: 78%; overflow-wrap: anywhere; }
.sysline.st-claimed { color: #047857; }
.sysline.st-resolved { color: #4b5563; }
.msg.is-handover { align-self: center; align-items: center; max-width: 92%; }
.msg.is-handover .bubble {
  display: flex; align-items: flex-start; gap: 8px; padding: 9px 13px; border-radius: 12px; text-align: left;
  background: #eef2ff; border: 1px solid #c7d2fe; color: #312e81; font-size: 13px; box-shadow: none;
}
.msg.is-handover .bubble > svg { flex: none; width: 18px; height: 18px; margin-top: 1px; color: var(--sd-accent); }
.msg.is-handover .imgs:empty { display: none; }

/* "Did this solve your problem?" */
.feedback {
  align-self: stretch; margin: 4px 2px 2px; padding: 14px 14px 12px; border-radius: 14px; text-align: center;
  background: #fff; border: 1px solid var(--sd-border); box-shadow: 0 1px 2px rgba(17, 24, 39, .04);
}
.fb-q { margin: 0 0 10px; font-weight: 650; font-size: 14px; }
.fb-thumbs { display: flex; justify-content: center; gap: 10px; }
.fb-thumb {
  width: 52px; height: 40px; border-radius: 12px; border: 1px solid #d1d5db; background: #fff; color: #4b5563; padding: 0;
  display: flex; align-items: center; justify-content: center; cursor: pointer; transition: background .12s, border-color .12s, color .12s;
}
.fb-thumb svg { width: 20px; height: 20px; }
.fb-thumb:hover:not(:disabled) { border-color: var(--sd-accent); color: var(--sd-accent); }
.fb-thumb.up[aria-pressed="true"] { background: #ecfdf5; border-color: #34d399; color: #047857; }
.fb-thumb.down[aria-pressed="true"] { background: #fef2f2; border-color: #f87171; color: #b91c1c; }
.fb-thumb:disabled { cursor: default; }
.fb-more { margin-top: 12px; display: flex; flex-direction: column; gap: 8px; text-align: left; }
.fb-label { font-size: 12px; font-weight: 600; color: var(--sd-muted); }
.feedback textarea.fb-comment { min-height: 64px; max-height: 120px; font-size: 13.5px; padding: 8px 11px; border-radius: 10px; resize: vertical; }
.fb-actions { display: flex; align-items: center; justify-content: flex-end; gap: 10px; }
.fb-count { margin-right: auto; font-size: 11.5px; color: var(--sd-muted); }
.fb-send {
  border: 0; border-radius: 999px; padding: 7px 16px; background: var(--sd-accent); color: #fff; font-weight: 600; font-size: 13px;
  cursor: pointer;
}
.fb-send:hover:not(:disabled) { background: var(--sd-accent-dark); }
.fb-send:disabled { background: #e5e7eb; color: #9ca3af; cursor: not-allowed; }
.fb-error { font-size: 12px; color: #b91c1c; text-align: left; }
.fb-thanks { display: flex; align-items: center; justify-content: center; gap: 8px; color: #047857; font-weight: 600; font-size: 13.5px; }
.fb-thanks svg { width: 18px; height: 18px; }

@media (max-width: 480px) {
  .panel {
    top: 0; right: 0; bottom: 0; left: 0; width: 100%; height: 100%; max-height: none; border-radius: 0;
  }
  .pos-left .panel { left: 0; }
  .is-open .launcher { display: none; }
  textarea { font-size: 16px; }
  .msg { max-width: 88%; }
}
@media (prefers-reduced-motion: reduce) {
  .panel, .launcher, .launcher svg { animation: none; transition: none; }
  .msg[data-streaming="true"] .text::after { animation: none; }
  .tdot, .menu { animation: none; }
  .tdot { opacity: .7; }
}
`;

  // ---------------------------------------------------------------------------------------
  // Build the widget
  // ---------------------------------------------------------------------------------------
  let host, shadow, root, launcher, badge, panel, statusRoot, statusEl, activityEl, bannerEl, list,
    previews, input, counter, attachBtn, fileInput, sendBtn, closeBtn, menuBtn, menuEl, handoverItem, typingEl,
    feedbackEl;

  function build() {
    host = document.createElement("div");
    host.id = "snapdesk-widget";
    const hs = host.style; // CSSOM, allowed by strict style-src policies
    // The host box sits where the launcher is (so it has a size), and lets clicks through.
    const hostStyle = {
      all: "initial", display: "block", position: "fixed", "z-index": "2147483000",
      bottom: "20px", width: "60px", height: "60px", "pointer-events": "none"
    };
    hostStyle[POSITION] = "20px";
    for (const k of Object.keys(hostStyle)) hs.setProperty(k, hostStyle[k], "important");
    shadow = host.attachShadow({ mode: "open" });

    const style = document.createElement("style");
    style.textContent = CSS;
    shadow.appendChild(style);
    // The same rules through a constructed sheet, for pages whose CSP blocks <style> elements.
    try {
      if ("adoptedStyleSheets" in shadow && typeof CSSStyleSheet === "function") {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
        shadow.adoptedStyleSheets = [sheet];
      }
    } catch (_) {
      /* the <style> element is enough */
    }

    root = el("div", { class: "root pos-" + POSITION + " st-bot", lang: LANG === "zh" ? "zh-CN" : "en" });

    // Launcher
    const chatIcon = icon("chat", true);
    chatIcon.setAttribute("class", "ic-chat");
    const closeIcon = icon("close");
    closeIcon.setAttribute("class", "ic-close");
    badge = el("span", { class: "badge", hidden: true, "aria-hidden": "true", "data-testid": "unread" });
    launcher = el("button", {
      type: "button", class: "launcher", "data-testid": "launcher", "aria-label": t("launcherOpen"),
      "aria-expanded": "false", "aria-controls": "sd-panel", "aria-haspopup": "dialog"
    }, [chatIcon, closeIcon, badge]);

    // Panel
    statusEl = el("span", { class: "status-text", "data-testid": "status" });
    activityEl = el("span", { class: "activity", "data-testid": "activity", hidden: true });
    statusRoot = el("p", { class: "status-line", role: "status" },
      [el("span", { class: "dot", "aria-hidden": "true" }), statusEl, activityEl]);
    closeBtn = el("button", { type: "button", class: "icon-btn close", "aria-label": t("close"), "data-testid": "close" },
      [icon("chevron")]);
    const titleEl = el("h2", { class: "title", id: "sd-title", text: TITLE });
    menuBtn = el("button", {
      type: "button", class: "icon-btn menu-btn", "aria-label": t("menu"), title: t("menu"), "aria-haspopup": "menu",
      "aria-expanded": "false", "aria-controls": "sd-menu", "data-testid": "menu"
    }, [icon("more", true)]);
    handoverItem = el("button", { type: "button", class: "menu-item", role: "menuitem", "data-testid": "talk-to-person" }, [
      icon("headset"),
      el("span", null, [
        el("span", { class: "menu-label", text: t("talkToPerson") }),
        el("span", { class: "menu-hint", text: t("talkToPersonHint") })
      ])
    ]);
    menuEl = el("div", { id: "sd-menu", class: "menu", role: "menu", "aria-label": t("menu"), hidden: true }, [handoverItem]);
    const header = el("div", { class: "header" }, [
      el("div", { class: "avatar", "aria-hidden": "true" }, [icon("chat", true)]),
      el("div", { class: "head-text" }, [titleEl, statusRoot]),
      el("div", { class: "menu-wrap" }, [menuBtn, menuEl]),
      closeBtn
    ]);

    bannerEl = el("div", { class: "banner", role: "note", "data-testid": "banner", hidden: true });

    list = el("div", {
      class: "messages", role: "log", "aria-live": "polite", "aria-relevant": "additions",
      "aria-label": t("conversation"), tabindex: "0", "data-testid": "messages"
    });
    const welcome = el("div", { class: "msg left welcome", "data-testid": "welcome" }, [
      el("div", { class: "author", text: t("assistant") }),
      el("div", { class: "bubble" }, [el("div", { class: "text", text: t("welcome") })])
    ]);
    list.appendChild(welcome);
    typingEl = el("div", {
      class: "msg left typing", "data-testid": "typing", role: "status", "aria-label": t("typing"), hidden: true
    }, [
      el("div", { class: "author", "aria-hidden": "true", text: t("assistant") }),
      el("div", { class: "bubble", "aria-hidden": "true" }, [
        el("span", { class: "tdot" }), el("span", { class: "tdot" }), el("span", { class: "tdot" })
      ])
    ]);
    list.appendChild(typingEl);
    list.addEventListener("scroll", function () {
      if (!panel.hidden) pinned = nearBottom();
    }, { passive: true });

    previews = el("div", { class: "previews", role: "list", "aria-label": t("attachments"), "data-testid": "previews", hidden: true });

    input = el("textarea", {
      id: "sd-input", rows: "1", "data-testid": "input", placeholder: t("placeholder"),
      maxlength: String(cfg.max_text_chars), autocomplete: "off", "aria-describedby": "sd-counter"
    });
    const label = el("label", { for: "sd-input", class: "sr-only", text: t("inputLabel") });
    counter = el("div", { class: "counter", id: "sd-counter", "aria-live": "polite", hidden: true });
    fileInput = el("input", {
      type: "file", accept: "image/*", multiple: true, hidden: true, tabindex: "-1",
      "aria-hidden": "true", "data-testid": "file-input"
    });
    attachBtn = el("button", { type: "button", class: "icon-btn attach", "aria-label": t("attach"), title: t("attach"), "data-testid": "attach" },
      [icon("clip")]);
    sendBtn = el("button", { type: "button", class: "send", "aria-label": t("send"), title: t("send"), disabled: true, "data-testid": "send" },
      [icon("send")]);
    const composer = el("div", { class: "composer" }, [
      attachBtn, fileInput, el("div", { class: "field" }, [label, input, counter]), sendBtn
    ]);

    const dropzone = el("div", { class: "dropzone", "aria-hidden": "true" }, [icon("image"), el("span", { text: t("drop") })]);

    panel = el("div", {
      id: "sd-panel", class: "panel", role: "dialog", "aria-label": TITLE, "data-testid": "panel", hidden: true
    }, [header, bannerEl, list, previews, composer, dropzone]);

    root.appendChild(launcher);
    root.appendChild(panel);
    shadow.appendChild(root);
    document.body.appendChild(host);

    wire();
    renderStatus();
    updateComposer();
  }

  // ---------------------------------------------------------------------------------------
  // Events from the user
  // ---------------------------------------------------------------------------------------
  const handled = new WeakSet();

  function wire() {
    launcher.addEventListener("click", function () {
      if (state.open) close();
      else open();
    });
    closeBtn.addEventListener("click", function () {
      close();
    });
    menuBtn.addEventListener("click", function () {
      if (menuEl.hidden) openMenu();
      else closeMenu(false);
    });
    handoverItem.addEventListener("click", function () {
      closeMenu(true);
      askForPerson();
    });
    menuEl.addEventListener("keydown", function (e) {
      if (e.key === "Tab") closeMenu(false);
    });
    panel.addEventListener("mousedown", function (e) {
      if (!menuEl.hidden && !e.composedPath().some(function (n) { return n === menuEl || n === menuBtn; })) closeMenu(false);
    });
    root.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && !menuEl.hidden) {
        e.preventDefault();
        e.stopPropagation();
        closeMenu(true);
        return;
      }
      if (e.key === "Escape" && state.open) {
        e.preventDefault();
        e.stopPropagation();
        close();
      }
    });

    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    input.addEventListener("input", function () {
      autosize();
      updateComposer();
    });
    sendBtn.addEventListener("click", function () {
      send();
    });
    attachBtn.addEventListener("click", function () {
      fileInput.click();
    });
    fileInput.addEventListener("change", function () {
      const files = Array.from(fileInput.files || []);
      fileInput.value = "";
      addFiles(files);
    });

    // Paste a screenshot (Ctrl/Cmd+V) into the textarea or anywhere in the panel.
    function onPaste(e) {
      if (handled.has(e)) return;
      handled.add(e);
      const files = clipboardFiles(e.clipboardData);
      if (!files.length) return; // plain text: let the browser paste it
      e.preventDefault();
      addFiles(files);
    }
    input.addEventListener("paste", onPaste);
    panel.addEventListener("paste", onPaste);

    // Drag and drop onto the panel.
    let depth = 0;
    function hasFiles(e) {
      const types = e.dataTransfer && e.dataTransfer.types;
      return !!types && Array.prototype.indexOf.call(types, "Files") !== -1;
    }
    panel.addEventListener("dragenter", function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth++;
      panel.classList.add("dragging");
    });
    panel.addEventListener("dragover", function (e) {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      panel.classList.add("dragging");
    });
    panel.addEventListener("dragleave", function (e) {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) panel.classList.remove("dragging");
    });
    panel.addEventListener("drop", function (e) {
      depth = 0;
      panel.classList.remove("dragging");
      if (!e.dataTransfer) return;
      const files = Array.from(e.dataTransfer.files || []);
      if (!files.length && !hasFiles(e)) return;
      e.preventDefault();
      addFiles(files);
    });
  }

  function clipboardFiles(cd) {
    if (!cd) return [];
    const out = [];
    if (cd.items && cd.items.length) {
      for (const item of Array.from(cd.items)) {
        if (item.kind !== "file") continue;
        const f = item.getAsFile();
        if (f) out.push(f);
      }
    }
    if (!out.length && cd.files && cd.files.length) out.push.apply(out, Array.from(cd.files));
    return out;
  }

  function autosize() {
    if (!input.value) {
      input.style.height = "";
      return;
    }
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 140) + "px";
  }

  // ---------------------------------------------------------------------------------------
  // Open / close
  // ---------------------------------------------------------------------------------------
  function open() {
    if (!state.open) {
      state.open = true;
      panel.hidden = false;
      root.classList.add("is-open");
      launcher.setAttribute("aria-expanded", "true");
      launcher.setAttribute("aria-label", t("launcherClose"));
      state.unread = 0;
      renderBadge();
      scrollToBottom(true);
      setTimeout(function () {
        if (state.open) input.focus({ preventScroll: true });
      }, 0);
    }
    start();
  }

  function close() {
    if (!state.open) return;
    closeMenu(false);
    state.open = false;
    panel.hidden = true;
    panel.classList.remove("dragging");
    root.classList.remove("is-open");
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", t("launcherOpen"));
    launcher.focus({ preventScroll: true });
  }

  function renderBadge() {
    if (state.unread > 0 && !state.open) {
      badge.textContent = state.unread > 9 ? "9+" : String(state.unread);
      badge.hidden = false;
      launcher.setAttribute("aria-label", t("launcherOpen") + " (" + t("unread", { n: state.unread }) + ")");
    } else {
      badge.hidden = true;
      badge.textContent = "";
      launcher.setAttribute("aria-label", state.open ? t("launcherClose") : t("launcherOpen"));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Status line
  // ---------------------------------------------------------------------------------------
  function setStatus(status, agent) {
    state.statusChanges++;
    if (typeof status === "string" && ["bot", "waiting", "claimed", "resolved"].indexOf(status) !== -1) {
      state.status = status;
    }
    state.agent = typeof agent === "string" && agent.trim() ? agent.trim() : null;
    renderStatus();
  }

  // ---------------------------------------------------------------------------------------
  // Menu: "Talk to a person"
  // ---------------------------------------------------------------------------------------
  function openMenu() {
    menuEl.hidden = false;
    menuBtn.setAttribute("aria-expanded", "true");
    setTimeout(function () {
      if (!menuEl.hidden && !handoverItem.disabled) handoverItem.focus({ preventScroll: true });
    }, 0);
  }

  function closeMenu(refocus) {
    if (menuEl.hidden) return;
    menuEl.hidden = true;
    menuBtn.setAttribute("aria-expanded", "false");
    if (refocus) menuBtn.focus({ preventScroll: true });
  }

  let askingForPerson = false;

  async function askForPerson() {
    if (askingForPerson || state.status === "waiting" || state.status === "claimed") return;
    askingForPerson = true;
    renderStatus();
    try {
      let res;
      try {
        res = await api("POST", "/widget/api/handover");
      } catch (_) {
        showNotice(t("handoverFailed"), true, "handover");
        return;
      }
      const body = await readJson(res);
      const code = body && typeof body.error === "string" ? body.error : "";
      const serverText = body && typeof body.message === "string" ? body.message : "";
      if (res.ok) {
        hideFeedback();
        if (state.status === "bot" || state.status === "resolved") setStatus("waiting", null);
      } else if (res.status === 409) {
        showNotice(serverText || t("alreadyWithPerson"), false, code || "already_with_person");
      } else if (res.status === 429) {
        const retry = retryAfter(res, body);
        showNotice(retry ? t("err_rate_limited", { s: retry }) : t("err_rate_limited_nos"), true, "rate_limited");
      } else {
        showNotice(res.status >= 500 ? t("handoverFailed") : errorText(code, serverText), true, code || "handover");
      }
    } finally {
      askingForPerson = false;
      renderStatus();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Typing indicator
  // ---------------------------------------------------------------------------------------
  /** The bot works on visitor message `replyTo` (null: one we do not know the id of). */
  function showTyping(replyTo) {
    const known = replyTo !== null && replyTo !== undefined && Number.isFinite(Number(replyTo));
    if (known && finished.has(String(replyTo))) return; // its reply is already here
    typing.pending.add(known ? Number(replyTo) : -1);
    typing.since = Date.now();
    clearTimeout(typing.timer);
    typing.timer = setTimeout(hideTyping, TYPING_MAX_MS);
    renderTyping();
  }

  /** A decided reply to `replyTo` arrived: that message and any before it are answered. */
  function typingDone(replyTo) {
    const n = Number(replyTo);
    if (replyTo === null || replyTo === undefined || !Number.isFinite(n)) {
      hideTyping();
      return;
    }
    for (const id of Array.from(typing.pending)) if (id <= n) typing.pending.delete(id);
    renderTyping();
  }

  function hideTyping() {
    typing.pending.clear();
    clearTimeout(typing.timer);
    typing.timer = null;
    renderTyping();
  }

  function renderTyping() {
    const show = typing.pending.size > 0;
    if (typingEl.hidden === !show) return;
    typingEl.hidden = !show;
    if (!typing.pending.size) clearTimeout(typing.timer);
    keepTail();
    if (show) scrollToBottom(false);
  }

  /** The feedback prompt and the typing indicator always stay below the newest message. */
  function keepTail() {
    if (feedbackEl && feedbackEl.parentNode === list) list.appendChild(feedbackEl);
    if (list.lastChild !== typingEl) list.appendChild(typingEl);
  }

  // ---------------------------------------------------------------------------------------
  // "Did this solve your problem?"
  // ---------------------------------------------------------------------------------------
  function showFeedback() {
    if (feedback.state === "asking" || feedback.state === "sending") return;
    feedback.state = "asking";
    feedback.helpful = null;
    feedback.comment = "";
    renderFeedback();
  }

  function hideFeedback() {
    if (feedback.state === "hidden") return;
    feedback.state = "hidden";
    if (feedbackEl) feedbackEl.remove();
    feedbackEl = null;
  }

  function renderFeedback(error) {
    const hadFocus = feedbackEl && shadow.activeElement && feedbackEl.contains(shadow.activeElement)
      ? shadow.activeElement.dataset.testid : null;
    const node = el("div", { class: "feedback", "data-testid": "feedback", "data-state": feedback.state, role: "group", "aria-labelledby": "sd-fb-q" });
    if (feedback.state === "done") {
      node.appendChild(el("p", { class: "fb-thanks", role: "status", "data-testid": "feedback-thanks" }, [
        icon("check"), el("span", { text: t("fbThanks") })
      ]));
    } else {
      node.appendChild(el("p", { class: "fb-q", id: "sd-fb-q", text: t("fbQuestion") }));
      const busy = feedback.state === "sending";
      const thumbs = el("div", { class: "fb-thumbs" });
      [[true, "up", "fbYes", "feedback-up"], [false, "down", "fbNo", "feedback-down"]].forEach(function (spec) {
        const b = el("button", {
          type: "button", class: "fb-thumb " + spec[1], "aria-label": t(spec[2]), title: t(spec[2]),
          "aria-pressed": feedback.helpful === spec[0] ? "true" : "false", "data-testid": spec[3], disabled: busy
        }, [icon(spec[1])]);
        b.addEventListener("click", function () {
          feedback.helpful = spec[0];
          renderFeedback();
        });
        thumbs.appendChild(b);
      });
      node.appendChild(thumbs);
      if (feedback.helpful !== null) {
        const area = el("textarea", {
          id: "sd-fb-comment", class: "fb-comment", rows: "3", maxlength: String(FEEDBACK_MAX_CHARS),
          placeholder: t("fbCommentPlaceholder"), "data-testid": "feedback-comment", disabled: busy
        });
        area.value = feedback.comment;
        const countEl = el("span", { class: "fb-count", "aria-live": "polite" });
        const sendFb = el("button", { type: "button", class: "fb-send", "data-testid": "feedback-send", disabled: busy, text: busy ? t("fbSending") : t("fbSend") });
        function counted() {
          const left = FEEDBACK_MAX_CHARS - area.value.length;
          countEl.textContent = area.value.length > FEEDBACK_MAX_CHARS * 0.8 ? t("charsLeft", { n: Math.max(0, left) }) : "";
        }
        area.addEventListener("input", function () {
          feedback.comment = area.value;
          counted();
        });
        area.addEventListener("keydown", function (e) {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            sendFeedback();
          }
        });
        sendFb.addEventListener("click", sendFeedback);
        counted();
        node.appendChild(el("div", { class: "fb-more" }, [
          el("label", { for: "sd-fb-comment", class: "fb-label", text: t("fbCommentLabel") }),
          area,
          error ? el("div", { class: "fb-error", role: "alert", "data-testid": "feedback-error", text: error }) : null,
          el("div", { class: "fb-actions" }, [countEl, sendFb])
        ]));
      }
    }
    if (feedbackEl && feedbackEl.parentNode) feedbackEl.replaceWith(node);
    else list.appendChild(node);
    feedbackEl = node;
    keepTail();
    scrollToBottom(false);
    if (hadFocus) {
      const again = node.querySelector('[data-testid="' + hadFocus + '"]') || node.querySelector("textarea");
      if (again && !again.disabled) again.focus({ preventScroll: true });
      else if (hadFocus === "feedback-up" || hadFocus === "feedback-down") {
        const area = node.querySelector("textarea");
        if (area) area.focus({ preventScroll: true });
      }
    }
  }

  async function sendFeedback() {
    if (feedback.state !== "asking" || feedback.helpful === null) return;
    const payload = { helpful: feedback.helpful };
    const comment = feedback.comment.trim().slice(0, FEEDBACK_MAX_CHARS);
    if (comment) payload.comment = comment;
    feedback.state = "sending";
    renderFeedback();
    let res;
    try {
      res = await api("POST", "/widget/api/feedback", JSON.stringify(payload), "application/json");
    } catch (_) {
      feedback.state = "asking";
      renderFeedback(t("fbFailed"));
      return;
    }
    if (feedback.state !== "sending") return; // hidden meanwhile (a new message)
    const body = await readJson(res);
    if (res.ok || res.status === 409) {
      // 409: already rated (another tab) or nothing left to rate: nothing more to ask.
      feedback.state = "done";
      renderFeedback();
      const thanks = feedbackEl.querySelector(".fb-thanks");
      if (thanks && res.status === 409 && body && typeof body.message === "string" && body.message) thanks.title = body.message;
    } else {
      feedback.state = "asking";
      const code = body && typeof body.error === "string" ? body.error : "";
      renderFeedback(res.status === 429 ? t("err_rate_limited_nos") : res.status >= 500 ? t("fbFailed") :
        errorText(code, body && typeof body.message === "string" ? body.message : t("fbFailed")));
    }
  }

  function renderStatus() {
    let text;
    if (state.status === "waiting") text = t("statusWaiting");
    else if (state.status === "claimed") text = t("statusClaimed", { name: state.agent || t("anAgent") });
    else if (state.status === "resolved") text = t("statusResolved");
    else text = t("statusBot");
    statusEl.textContent = text;
    statusEl.title = text;
    root.classList.remove("st-bot", "st-waiting", "st-claimed", "st-resolved");
    root.classList.add("st-" + state.status);
    const withPerson = state.status === "waiting" || state.status === "claimed";
    handoverItem.disabled = withPerson || askingForPerson;
    handoverItem.setAttribute("aria-disabled", handoverItem.disabled ? "true" : "false");
    renderActivity();
  }

  function renderActivity() {
    let text = "";
    if (state.sending > 0) text = t("sending");
    else if (state.preparing > 0) text = t("preparing");
    else if (state.reconnecting) text = t("reconnecting");
    activityEl.textContent = text;
    activityEl.hidden = !text;
  }

  // ---------------------------------------------------------------------------------------
  // Server calls
  // ---------------------------------------------------------------------------------------
  let sessionPromise = null;
  let sessionReady = false;

  async function createSession() {
    const call = function (withToken) {
      const headers = { "Content-Type": "application/json" };
      if (withToken && state.token) headers.Authorization = "Bearer " + state.token;
      return fetch(SERVER + "/widget/api/session", {
        method: "POST", headers: headers, body: "{}", credentials: "omit", cache: "no-store"
      });
    };
    let res = await call(true);
    if (res.status === 401 && state.token) {
      writeToken(null);
      res = await call(false);
    }
    if (!res.ok) {
      const err = new Error("session failed: " + res.status);
      err.response = res;
      err.body = await readJson(res);
      throw err;
    }
    const body = await readJson(res);
    if (!body || typeof body.token !== "string" || !body.token) throw new Error("session: no token");
    const changed = writeToken(body.token);
    sessionReady = true;
    if (changed && source) connectEvents();
  }

  function ensureSession() {
    if (sessionReady && state.token) return Promise.resolve();
    if (!sessionPromise) {
      sessionPromise = createSession().finally(function () {
        sessionPromise = null;
      });
    }
    return sessionPromise;
  }

  /** fetch() against the server with the visitor token; on 401, one fresh session and one retry. */
  async function api(method, path, body, contentType) {
    await ensureSession();
    const call = function () {
      const headers = {};
      if (state.token) headers.Authorization = "Bearer " + state.token;
      if (contentType) headers["Content-Type"] = contentType;
      return fetch(SERVER + path, { method: method, headers: headers, body: body, credentials: "omit", cache: "no-store" });
    };
    const used = state.token;
    let res = await call();
    if (res.status === 401) {
      if (state.token === used) {
        writeToken(null);
        sessionReady = false;
      }
      await ensureSession();
      res = await call();
    }
    return res;
  }

  async function readJson(res) {
    try {
      return await res.json();
    } catch (_) {
      return null;
    }
  }

  let startPromise = null;

  function start() {
    if (!startPromise) {
      startPromise = (async function () {
        await ensureSession();
        await Promise.all([loadConfig(), loadConversation()]);
        connectEvents();
      })().catch(function (err) {
        startPromise = null;
        const body = err && err.body;
        const code = body && body.error;
        showNotice(code && STR["err_" + code] ? t("err_" + code) : t("sessionFailed"), true, code || "session");
      });
    }
    return startPromise;
  }

  async function loadConfig() {
    let res;
    try {
      res = await api("GET", "/widget/api/config");
    } catch (_) {
      return;
    }
    if (!res.ok) return;
    const c = await readJson(res);
    if (!c || typeof c !== "object") return;
    for (const k of ["max_images", "max_image_bytes", "max_text_chars"]) {
      const v = Number(c[k]);
      if (Number.isFinite(v) && v > 0) cfg[k] = Math.floor(v);
    }
    cfg.demo = !!c.demo;
    cfg.banner = typeof c.banner === "string" && c.banner.trim() ? c.banner : null;
    bannerEl.textContent = cfg.banner || "";
    bannerEl.hidden = !cfg.banner;
    input.setAttribute("maxlength", String(cfg.max_text_chars));
    updateComposer();
  }

  async function loadConversation() {
    const asked = Date.now();
    const changesBefore = state.statusChanges;
    const res = await api("GET", "/widget/api/conversation");
    if (!res.ok) return;
    const conv = await readJson(res);
    if (!conv || typeof conv !== "object") return;
    const msgs = Array.isArray(conv.messages) ? conv.messages.slice() : [];
    msgs.sort(function (a, b) {
      return (Number(a && a.id) || 0) - (Number(b && b.id) || 0);
    });
    const live = state.historyLoaded;
    for (const m of msgs) addMessage(m, live, false);
    state.historyLoaded = true;
    // The conversation's own status wins over what the replayed lines said, unless a live event
    // changed it while this snapshot was on its way (the snapshot may predate a hand-over).
    if (state.statusChanges === changesBefore) setStatus(conv.status, conv.agent);
    if (conv.working === true) {
      const mine = msgs.filter(function (m) { return m && m.role === "user"; });
      const last = mine.length ? mine[mine.length - 1].id : null;
      if (last === null || last === undefined || !finished.has(String(last))) showTyping(last);
    } else if (conv.working === false && typing.pending.size && typing.since < asked) {
      hideTyping(); // answered (or taken by a person) while we were away
    }
    if (conv.feedback_requested === true) showFeedback();
    else if (conv.feedback_requested === false && feedback.state === "asking" && feedback.helpful === null) hideFeedback();
  }

  // ---------------------------------------------------------------------------------------
  // Live events (server-sent events)
  // ---------------------------------------------------------------------------------------
  let source = null;
  let reconnectTimer = null;
  let backoff = 1000;

  function connectEvents() {
    if (!state.token || typeof EventSource === "undefined") return;
    if (source) source.close();
    clearTimeout(reconnectTimer);
    const es = new EventSource(SERVER + "/widget/api/events?token=" + encodeURIComponent(state.token));
    source = es;
    es.addEventListener("open", function () {
      if (source !== es) return;
      backoff = 1000;
      state.reconnecting = false;
      activityEl.dataset.live = "true"; // replies can reach this tab now
      renderActivity();
      // Fill any gap: messages written while the stream was (re)connecting. Deduplicated by id.
      loadConversation().catch(function () {});
    });
    es.addEventListener("error", function () {
      if (source !== es) return;
      state.reconnecting = true;
      activityEl.dataset.live = "false";
      renderActivity();
      if (es.readyState === 2) {
        // Closed for good (refused, e.g. an expired token): check the token (401 -> new
        // session) and reconnect ourselves, backing off.
        es.close();
        source = null;
        clearTimeout(reconnectTimer);
        reconnectTimer = setTimeout(function () {
          loadConversation()
            .catch(function () {})
            .then(function () {
              if (!source) connectEvents();
            });
        }, backoff);
        backoff = Math.min(backoff * 2, 30000);
      }
    });
    es.addEventListener("message", function (e) {
      const m = parse(e.data);
      if (m) addMessage(m, true);
    });
    es.addEventListener("delta", function (e) {
      const d = parse(e.data);
      if (d) addDelta(d);
    });
    es.addEventListener("status", function (e) {
      const s = parse(e.data);
      if (!s) return;
      setStatus(s.status, s.agent);
      if (s.status === "waiting" || s.status === "claimed") hideTyping();
    });
    es.addEventListener("screenshots", function () {
      // A message's screenshots were read and redacted: show the copies everyone else sees.
      loadConversation().catch(function () {});
    });
    es.addEventListener("typing", function (e) {
      const d = parse(e.data);
      if (d) showTyping(d.reply_to);
    });
  }

  function parse(text) {
    try {
      const v = JSON.parse(text);
      return v && typeof v === "object" ? v : null;
    } catch (_) {
      return null;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Messages
  // ---------------------------------------------------------------------------------------
  // Follow new messages while the reader is at the bottom; leave them alone when they scrolled up.
  let pinned = true;

  function nearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function scrollToBottom(force) {
    if (force) pinned = true;
    if (!pinned) return;
    list.scrollTop = list.scrollHeight;
    requestAnimationFrame(function () {
      if (pinned) list.scrollTop = list.scrollHeight;
    });
  }

  function sideOf(m) {
    if (m.role === "user") return "right";
    if (m.kind === "handover" || m.kind === "status") return "center";
    if (m.role === "bot" || m.role === "agent") return "left";
    return "center";
  }

  const STATUS_LINES = { claimed: "lineClaimed", bot: "lineBot", resolved: "lineResolved" };

  function authorOf(m) {
    for (const k of ["author_name", "author"]) {
      if (typeof m[k] === "string" && m[k].trim()) return m[k].trim();
    }
    return "";
  }

  /** A change of who answers, as a centered line: "Mei joined the conversation." */
  function renderStatusLine(m, node) {
    const status = Object.prototype.hasOwnProperty.call(STATUS_LINES, m.status) ? m.status : "other";
    node.dataset.status = status;
    node.classList.add("is-status");
    const text = el("span", { class: "text", "data-testid": "message-text" });
    const fallback = status === "other" ? "" : t(STATUS_LINES[status], { name: authorOf(m) || t("anAgent") });
    text.textContent = typeof m.text === "string" && m.text.trim() ? m.text : fallback;
    node.appendChild(el("div", { class: "sysline st-" + status }, [text]));
    return node;
  }

  function renderMessage(m) {
    const role = typeof m.role === "string" ? m.role : "system";
    const kind = typeof m.kind === "string" ? m.kind : role === "user" ? "user" : "notice";
    const side = sideOf({ role: role, kind: kind });
    const node = el("div", {
      class: "msg " + side + " is-" + role + " is-" + kind,
      "data-testid": "message",
      "data-role": role,
      "data-kind": kind
    });
    if (m.id !== null && m.id !== undefined) node.dataset.id = String(m.id);
    if (m.reply_to !== null && m.reply_to !== undefined) node.dataset.replyTo = String(m.reply_to);
    const when = formatTime(parseTime(m.created_at) || new Date());
    if (when) node.title = when;
    if (kind === "status") return renderStatusLine(m, node);

    if (side === "left") {
      const name = role === "agent" ? authorOf(m) || t("agentDefault") : t("assistant");
      node.appendChild(el("div", { class: "author", text: name }));
    } else if (side === "right") {
      node.appendChild(el("span", { class: "sr-only", text: t("you") + ":" }));
    }
    const bubble = el("div", { class: "bubble" });
    const imgs = el("div", { class: "imgs" });
    const text = el("div", { class: "text", "data-testid": "message-text" });
    if (kind === "handover") bubble.appendChild(icon("headset"));
    bubble.appendChild(imgs);
    bubble.appendChild(text);
    node.appendChild(bubble);
    fillText(text, m.text);
    showServerImages(node, m);
    const cited = sourcesList(m);
    if (cited) bubble.appendChild(cited);
    return node;
  }

  function setImages(node, urls, linked) {
    const box = node.querySelector(".imgs");
    box.textContent = "";
    box.classList.toggle("many", urls.length > 1);
    urls.forEach(function (url, i) {
      const img = el("img", { alt: t("previewAlt", { n: i + 1 }), loading: "lazy", decoding: "async" });
      img.src = url;
      if (linked) {
        const a = el("a", { href: url, target: "_blank", rel: "noopener noreferrer", "aria-label": t("openImage", { n: i + 1 }) });
        a.appendChild(img);
        box.appendChild(a);
      } else {
        box.appendChild(img);
      }
      img.addEventListener("load", function () {
        scrollToBottom(false);
      });
      img.addEventListener("error", function () {
        // Unavailable (expired link, removed file): a neutral tile instead of a broken image.
        const tile = el("span", { class: "img-missing", role: "img", "aria-label": img.alt }, [icon("image")]);
        (img.parentNode === box ? img : img.parentNode).replaceWith(tile);
      });
    });
  }

  /** Insert in server-id order; elements without an id (optimistic, streaming, notices) stay where they are. */
  function insertMessage(node, id) {
    const n = Number(id);
    if (id !== null && id !== undefined && Number.isFinite(n)) {
      const items = list.querySelectorAll('[data-testid="message"][data-id]');
      for (const other of Array.from(items)) {
        if (Number(other.dataset.id) > n) {
          list.insertBefore(node, other);
          return;
        }
      }
    }
    list.appendChild(node);
  }

  /** A message from the server; `live` counts it as unread, `apply` lets it move the header status. */
  function addMessage(m, live, apply) {
    if (!m || typeof m !== "object") return;
    if (apply === undefined) apply = live;
    const hasId = m.id !== null && m.id !== undefined;
    const key = hasId ? String(m.id) : null;

    if (key && byId.has(key)) {
      const existing = byId.get(key);
      if (existing.dataset.outbox) upgrade(existing, m);
      else showServerImages(existing, m);
      return;
    }
    if (m.role === "user" && m.client_message_id && outbox.has(String(m.client_message_id))) {
      upgrade(outbox.get(String(m.client_message_id)).node, m);
      return;
    }

    const node = renderMessage(m);
    const replyKey = m.reply_to !== null && m.reply_to !== undefined ? String(m.reply_to) : null;
    const final = replyKey && (m.role === "bot" || m.role === "system") &&
      (m.kind === "answer" || m.kind === "handover" || m.kind === "notice");
    if (final) {
      finished.add(replyKey);
      const streaming = streams.get(replyKey);
      if (streaming) {
        streams.delete(replyKey);
        streaming.replaceWith(node);
      } else {
        insertMessage(node, m.id);
      }
    } else {
      insertMessage(node, m.id);
    }
    if (key) byId.set(key, node);
    afterMessage(m, apply);
    keepTail();
    if (live && m.role !== "user" && !state.open) {
      state.unread++;
      renderBadge();
    }
    scrollToBottom(m.role === "user");
  }

  /** What a new message means for the typing indicator, the header and the feedback prompt. */
  function afterMessage(m, apply) {
    const kind = m.kind;
    if (kind === "status") {
      hideTyping();
      if (apply) {
        setStatus(m.status, m.status === "claimed" ? authorOf(m) || null : null);
        if (m.status === "resolved") showFeedback();
        else hideFeedback();
      }
    } else if (kind === "handover") {
      hideTyping();
      if (apply) setStatus("waiting", null);
    } else if (kind === "answer" && m.role === "bot") {
      typingDone(m.reply_to);
      if (apply) setStatus("bot", null);
    } else if (kind === "notice" && m.reply_to !== null && m.reply_to !== undefined) {
      typingDone(m.reply_to);
    } else if (m.role === "user" && apply) {
      hideFeedback(); // a new message (this tab or another) reopens the conversation
    }
  }

  function addDelta(d) {
    if (d.reply_to === null || d.reply_to === undefined) return;
    const key = String(d.reply_to);
    if (finished.has(key)) return;
    let node = streams.get(key);
    if (!node) {
      node = renderMessage({ role: "bot", kind: "answer", text: "", reply_to: d.reply_to, created_at: null });
      node.dataset.streaming = "true";
      node.setAttribute("aria-busy", "true");
      streams.set(key, node);
      list.appendChild(node);
      typingDone(d.reply_to); // the text itself now shows that the assistant is writing
      keepTail();
    }
    const text = node.querySelector('[data-testid="message-text"]');
    text.textContent += typeof d.text === "string" ? d.text : "";
    scrollToBottom(false);
  }

  /** The server confirmed one of our own messages: give it its id and the server's copy of the images. */
  function upgrade(node, m) {
    const hasId = m.id !== null && m.id !== undefined;
    if (hasId) {
      node.dataset.id = String(m.id);
      byId.set(String(m.id), node);
    }
    const cid = node.dataset.clientId;
    const entry = cid ? outbox.get(cid) : null;
    if (showServerImages(node, m) && entry) {
      entry.images.forEach(function (im) { setTimeout(function () { URL.revokeObjectURL(im.url); }, 30000); });
    }
    if (typeof m.text === "string") fillText(node.querySelector('[data-testid="message-text"]'), m.text);
    const when = formatTime(parseTime(m.created_at));
    if (when) node.title = when;
    markSent(node);
    delete node.dataset.outbox;
    if (cid) outbox.delete(cid);
  }

  /** An answer's cited help-centre articles: "[1] Title" as links (http(s) only), else plain titles. */
  function sourcesList(m) {
    const items = (Array.isArray(m.sources) ? m.sources : []).filter(function (s) { return s && typeof s === "object"; });
    if (m.kind !== "answer" || !items.length) return null;
    const list = el("ol", {});
    items.forEach(function (s) {
      const label = "[" + String(Number(s.n) || "") + "] " + String(s.title || "");
      const own = Number(s.article_id) > 0 ? SERVER + "/help/" + String(Number(s.article_id)) : null;
      const url = typeof s.url === "string" && s.url ? httpUrl(s.url) : own ? httpUrl(own) : null;
      const item = el("li", {});
      if (url) item.appendChild(el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: label }));
      else item.textContent = label;
      list.appendChild(item);
    });
    return el("div", { class: "sources", "data-testid": "sources" }, [el("p", { text: t("sources") }), list]);
  }

  /** The server's copies of a message's screenshots (redacted: personal data painted over)
   *  replace the local previews once they exist; true when they were shown. */
  function showServerImages(node, m) {
    const urls = (Array.isArray(m.images) ? m.images : []).map(safeServerUrl).filter(Boolean);
    if (!urls.length || node.dataset.serverImages === urls.join(" ")) return false;
    if (!node.querySelector(".imgs")) return false;
    setImages(node, urls, true);
    node.dataset.serverImages = urls.join(" ");
    return true;
  }

  function markSent(node) {
    node.classList.remove("is-sending", "is-failed");
    node.dataset.status = "sent";
    node.removeAttribute("aria-busy");
    const meta = node.querySelector(".meta");
    if (meta) meta.remove();
  }

  function showNotice(text, isError, code) {
    const node = el("div", {
      class: "notice" + (isError ? " error" : ""), "data-testid": "notice",
      "data-code": code || null, role: isError ? "alert" : null
    });
    node.textContent = String(text);
    list.appendChild(node);
    keepTail();
    scrollToBottom(true);
    return node;
  }

  // ---------------------------------------------------------------------------------------
  // Attachments
  // ---------------------------------------------------------------------------------------
  const IMAGE_EXT = /\.(png|jpe?g|gif|webp|bmp|avif|heic|heif|tiff?)$/i;
  const EXT_OF = { "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp", "image/avif": "avif" };

  function isImage(file) {
    if (file.type) return file.type.indexOf("image/") === 0;
    return IMAGE_EXT.test(file.name || "");
  }

  function displayName(file, i) {
    return (file && file.name) || "image-" + (i + 1);
  }

  async function addFiles(files) {
    if (!files || !files.length) return;
    start();
    for (let i = 0; i < files.length; i++) {
      const f = files[i];
      if (!isImage(f)) {
        showNotice(t("notImage", { name: displayName(f, i) }), true, "not_image");
        continue;
      }
      if (pending.length + state.preparing >= cfg.max_images) {
        showNotice(t("tooManyLocal", { max: cfg.max_images }), true, "too_many_images");
        break;
      }
      if (f.size === 0) {
        showNotice(t("emptyFile", { name: displayName(f, i) }), true, "empty");
        continue;
      }
      let blob = f;
      if (f.size > cfg.max_image_bytes) {
        state.preparing++;
        renderActivity();
        updateComposer();
        try {
          blob = await shrink(f, cfg.max_image_bytes);
          if (!blob) showNotice(t("cannotShrink", { name: displayName(f, i), size: formatBytes(cfg.max_image_bytes) }), true, "too_large");
        } catch (_) {
          blob = null;
          showNotice(t("unreadable", { name: displayName(f, i) }), true, "corrupt");
        } finally {
          state.preparing--;
          renderActivity();
        }
        if (!blob) {
          updateComposer();
          continue;
        }
      }
      pending.push({ blob: blob, url: URL.createObjectURL(blob) });
      renderPreviews();
    }
    updateComposer();
  }

  function decode(blob) {
    if (typeof createImageBitmap === "function") {
      return createImageBitmap(blob).catch(function () {
        return decodeWithImage(blob);
      });
    }
    return decodeWithImage(blob);
  }

  function decodeWithImage(blob) {
    return new Promise(function (resolve, reject) {
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.addEventListener("load", function () {
        resolve({ source: img, width: img.naturalWidth, height: img.naturalHeight, done: function () { URL.revokeObjectURL(url); } });
      });
      img.addEventListener("error", function () {
        URL.revokeObjectURL(url);
        reject(new Error("decode failed"));
      });
      img.src = url;
    });
  }

  function toBlob(canvas, type, quality) {
    return new Promise(function (resolve) {
      canvas.toBlob(resolve, type, quality);
    });
  }

  /** Scale an image down until its encoded size fits the limit; null when it cannot be done. */
  async function shrink(file, limit) {
    const decoded = await decode(file);
    const source = decoded.source || decoded;
    let w = decoded.width;
    let h = decoded.height;
    if (!w || !h) throw new Error("no size");
    let size = file.size;
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d");
    try {
      for (let attempt = 0; attempt < 6; attempt++) {
        const factor = Math.min(0.9, Math.sqrt(limit / size) * 0.9);
        w = Math.max(1, Math.floor(w * factor));
        h = Math.max(1, Math.floor(h * factor));
        canvas.width = w;
        canvas.height = h;
        ctx.fillStyle = "#ffffff";
        ctx.fillRect(0, 0, w, h);
        ctx.imageSmoothingEnabled = true;
        ctx.imageSmoothingQuality = "high";
        ctx.drawImage(source, 0, 0, w, h);
        if (w * h <= 1500000) {
          const png = await toBlob(canvas, "image/png");
          if (png && png.size <= limit) return png;
        }
        const jpeg = await toBlob(canvas, "image/jpeg", 0.85);
        if (!jpeg) return null;
        if (jpeg.size <= limit) return jpeg;
        size = jpeg.size;
      }
      return null;
    } finally {
      if (typeof source.close === "function") source.close();
      if (typeof decoded.done === "function") decoded.done();
      canvas.width = canvas.height = 0;
    }
  }

  function renderPreviews(focusIndex) {
    previews.textContent = "";
    pending.forEach(function (item, i) {
      const n = i + 1;
      const img = el("img", { alt: t("previewAlt", { n: n }) });
      img.src = item.url;
      const remove = el("button", {
        type: "button", class: "remove", "aria-label": t("removeImage", { n: n }), title: t("removeImage", { n: n }),
        "data-testid": "remove-preview"
      }, [icon("close")]);
      remove.addEventListener("click", function () {
        const [gone] = pending.splice(i, 1);
        if (gone) URL.revokeObjectURL(gone.url);
        renderPreviews(Math.min(i, pending.length - 1));
        updateComposer();
      });
      previews.appendChild(el("div", { class: "preview", role: "listitem", "data-testid": "preview" }, [img, remove]));
    });
    previews.hidden = pending.length === 0;
    if (focusIndex !== undefined) {
      const buttons = previews.querySelectorAll(".remove");
      if (focusIndex >= 0 && buttons[focusIndex]) buttons[focusIndex].focus();
      else input.focus();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Sending
  // ---------------------------------------------------------------------------------------
  function updateComposer() {
    const text = input.value.trim();
    const len = input.value.length;
    sendBtn.disabled = (!text && pending.length === 0) || state.preparing > 0 || text.length > cfg.max_text_chars;
    const left = cfg.max_text_chars - len;
    if (len > cfg.max_text_chars * 0.8) {
      counter.hidden = false;
      counter.textContent = t("charsLeft", { n: Math.max(0, left) });
      counter.classList.toggle("over", left <= 0);
    } else {
      counter.hidden = true;
      counter.textContent = "";
    }
  }

  function send() {
    if (sendBtn.disabled) return;
    const text = input.value.trim();
    if (!text && !pending.length) return;
    if (text.length > cfg.max_text_chars) {
      showNotice(t("textTooLongLocal", { max: cfg.max_text_chars }), true, "text_too_long");
      return;
    }
    const images = pending.map(function (item, i) {
      const ext = EXT_OF[item.blob.type] || "png";
      return { blob: item.blob, url: item.url, name: "screenshot-" + (i + 1) + "." + ext };
    });
    const entry = { cid: newClientId(), text: text, images: images, node: null };
    const node = renderMessage({ role: "user", kind: "user", text: text, images: [], created_at: new Date().toISOString() });
    node.dataset.clientId = entry.cid;
    node.dataset.outbox = "true";
    setImages(node, images.map(function (im) { return im.url; }), false);
    entry.node = node;
    outbox.set(entry.cid, entry);
    hideFeedback();
    list.appendChild(node);
    keepTail();
    scrollToBottom(true);

    pending = [];
    input.value = "";
    autosize();
    renderPreviews();
    updateComposer();
    input.focus({ preventScroll: true });
    deliver(entry);
  }

  async function deliver(entry) {
    const node = entry.node;
    node.classList.add("is-sending");
    node.classList.remove("is-failed");
    node.dataset.status = "sending";
    const oldMeta = node.querySelector(".meta");
    if (oldMeta) oldMeta.remove();
    state.sending++;
    renderActivity();
    try {
      const form = new FormData();
      form.append("client_message_id", entry.cid);
      form.append("text", entry.text);
      entry.images.forEach(function (im) {
        form.append("images", im.blob, im.name);
      });
      let res;
      try {
        res = await api("POST", "/widget/api/messages", form);
      } catch (_) {
        if (node.dataset.outbox) {
          markFailed(entry);
          showNotice(t("network"), true, "network");
        }
        return;
      }
      const body = await readJson(res);
      if (res.ok) {
        if (body && body.message_id !== undefined && body.message_id !== null && !node.dataset.id) {
          node.dataset.id = String(body.message_id);
          byId.set(String(body.message_id), node);
        }
        markSent(node);
        // Never a blank wait: the assistant is on it (unless a person has the conversation).
        if (!(body && body.duplicate) && (state.status === "bot" || state.status === "resolved")) {
          showTyping(body ? body.message_id : null);
        }
        return;
      }
      const code = body && typeof body.error === "string" ? body.error : "";
      const serverText = body && typeof body.message === "string" ? body.message : "";
      if (res.status === 429) {
        const retry = retryAfter(res, body);
        markFailed(entry);
        showNotice(retry ? t("err_rate_limited", { s: retry }) : t("err_rate_limited_nos"), true, "rate_limited");
      } else if (res.status >= 500) {
        markFailed(entry);
        showNotice(t("server"), true, code || "server");
      } else {
        // Refused as it is (too large, too many images, unreadable...): give the draft back to edit.
        showNotice(errorText(code, serverText), true, code || "error");
        rejectEntry(entry);
      }
    } finally {
      state.sending--;
      renderActivity();
    }
  }

  function retryAfter(res, body) {
    const header = res.headers.get("Retry-After");
    let s = header ? Number(header) : NaN;
    if (!Number.isFinite(s) && header) {
      const date = Date.parse(header);
      if (!isNaN(date)) s = Math.round((date - Date.now()) / 1000);
    }
    if (!Number.isFinite(s) && body && Number.isFinite(Number(body.retry_after))) s = Number(body.retry_after);
    return Number.isFinite(s) && s > 0 ? Math.ceil(s) : null;
  }

  function errorText(code, serverText) {
    if (code && STR["err_" + code] !== undefined) {
      return t("err_" + code, { max: code === "too_many_images" ? cfg.max_images : cfg.max_text_chars });
    }
    return serverText || t("generic");
  }

  function markFailed(entry) {
    const node = entry.node;
    if (!node.dataset.outbox) return;
    node.classList.remove("is-sending");
    node.classList.add("is-failed");
    node.dataset.status = "failed";
    let meta = node.querySelector(".meta");
    if (meta) meta.remove();
    const retry = el("button", { type: "button", class: "retry", "aria-label": t("retryLabel"), "data-testid": "retry", text: t("retry") });
    retry.addEventListener("click", function () {
      deliver(entry);
    });
    meta = el("div", { class: "meta" }, [el("span", { text: t("failed") }), retry]);
    node.appendChild(meta);
  }

  function rejectEntry(entry) {
    outbox.delete(entry.cid);
    entry.node.remove();
    // Put the message back in the composer when it is free, so it can be fixed and sent again.
    if (!input.value.trim() && !pending.length) {
      input.value = entry.text;
      pending = entry.images.slice(0, cfg.max_images).map(function (im) {
        return { blob: im.blob, url: im.url };
      });
      autosize();
      renderPreviews();
      updateComposer();
    } else {
      entry.images.forEach(function (im) { URL.revokeObjectURL(im.url); });
    }
  }

  // ---------------------------------------------------------------------------------------
  // Public handle and start-up
  // ---------------------------------------------------------------------------------------
  window.SnapdeskWidget = Object.freeze({
    open: function () {
      open();
    },
    close: function () {
      close();
    },
    state: function () {
      return {
        open: state.open,
        status: state.status,
        token: state.token,
        messages: list ? list.querySelectorAll('[data-testid="message"]:not([data-streaming="true"])').length : 0,
        typing: typing.pending.size > 0,
        feedback: feedback.state
      };
    }
  });

  function init() {
    build();
    if (START_OPEN) open();
    else if (state.token) start(); // a returning visitor: restore history and listen for replies
  }

  if (document.body) init();
  else document.addEventListener("DOMContentLoaded", init, { once: true });
})();

/*
 * The operator console's Knowledge tab: import help-centre articles (files, pages, sitemaps),
 * read and remove them, re-sync, test what a question and its screenshots retrieve, and see the
 * gaps (questions the help centre could not answer) and stale articles (old but still cited).
 *
 * An ES module imported by operator.js, which owns navigation and the API client. Everything
 * from the server (titles, passages, questions, sources, import errors) is inserted as text
 * nodes only; links are made only from http(s) URLs.
 */
import { $, el, setText, str, isNum, parseTime, showError, toast, clear, setStatus, setBusy } from "./console-common.js";

const API = "/operator/api/knowledge";
const MAX_SCREENSHOTS = 4;
const LANGUAGES = { en: "English", zh: "Chinese" };
const KINDS = { upload: "Upload", page: "Web page", file: "File" };
const GROUP_KINDS = {
  error_code: { label: "Error code", cls: "kb-kind-code" },
  screen_title: { label: "Screen", cls: "kb-kind-screen" },
  text_only: { label: "No screenshot evidence", cls: "kb-kind-text" }
};


function day(iso) {
  const d = parseTime(iso);
  if (!d) return str(iso);
  try {
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  } catch (_) {
    return d.toDateString();
  }
}

function plural(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

/** A link for an http(s) URL, else plain text (a javascript: URL never becomes a link). */
function linkOrText(url, text, cls) {
  const u = str(url);
  if (/^https?:\/\//i.test(u)) {
    return el("a", { href: u, target: "_blank", rel: "noopener noreferrer", class: cls, text: text || u });
  }
  return el("span", { class: cls, text: text || u });
}

function sourceLabel(article) {
  const source = str(article.source);
  if (article.source_kind === "upload") return source.replace(/^upload:/, "");
  return str(article.url) || source;
}

export function knowledgeTab(api) {
  const state = { articles: [], openId: null, loaded: false, seq: 0 };

  // Articles ----------------------------------------------------------------------------------
  async function loadArticles() {
    const seq = ++state.seq;
    $("kb-rows").setAttribute("aria-busy", "true");
    setStatus($("kb-articles-status"), state.articles.length ? "" : "Loading…", "busy");
    try {
      const data = await api(API + "/articles");
      if (seq !== state.seq) return;
      state.articles = Array.isArray(data.articles) ? data.articles : [];
      setText($("kb-settings"), "Relevant from score " + str(data.min_score) + " · stale after " + str(data.stale_days) + " days");
      setStatus($("kb-articles-status"), plural(state.articles.length, "article", "articles"));
    } catch (e) {
      setStatus($("kb-articles-status"), "Not loaded", "bad");
      showError("The articles could not be loaded: " + e.message);
    } finally {
      $("kb-rows").setAttribute("aria-busy", "false");
    }
    renderArticles();
  }

  function matches(article, needle) {
    if (!needle) return true;
    return (str(article.title) + " " + sourceLabel(article)).toLowerCase().indexOf(needle) !== -1;
  }

  function renderArticles() {
    const body = $("kb-rows");
    clear(body);
    const needle = $("kb-filter").value.trim().toLowerCase();
    const shown = state.articles.filter(function (a) {
      return matches(a, needle);
    });
    if (!shown.length) {
      const text = state.articles.length ? "No article matches the filter." : "No articles yet: import some above.";
      body.appendChild(el("tr", null, [el("td", { colspan: "7", class: "muted", text: text })]));
      return;
    }
    for (const a of shown) body.appendChild(articleRow(a));
  }

  function articleRow(a) {
    const id = String(a.id);
    const view = el("button", { type: "button", class: "btn btn-secondary btn-sm", "data-testid": "kb-view",
      "aria-label": "View " + str(a.title), text: "View" });
    view.addEventListener("click", function () {
      openArticle(a.id);
    });
    const remove = el("button", { type: "button", class: "btn btn-secondary btn-sm op-danger", "data-testid": "kb-remove",
      "aria-label": "Remove " + str(a.title), text: "Remove" });
    remove.addEventListener("click", function () {
      removeArticle(a, remove);
    });
    const stale = a.status === "stale";
    return el("tr", { class: "kb-row", "data-testid": "kb-article", "data-id": id, "aria-current": state.openId === a.id ? "true" : null }, [
      el("td", { class: "kb-title-cell" }, [
        el("span", { class: "kb-title", "data-testid": "kb-article-title", text: str(a.title) }),
        linkOrText(a.url, sourceLabel(a), "kb-src")
      ]),
      el("td", { text: LANGUAGES[a.language] || str(a.language) || "—" }),
      el("td", { class: "kb-num", text: str(a.chunks) }),
      el("td", { title: str(a.updated_at), text: day(a.updated_at) }),
      el("td", { text: KINDS[a.source_kind] || str(a.source_kind) }),
      el("td", null, [el("span", { class: "op-chip " + (stale ? "kb-st-stale" : "kb-st-current"), text: stale ? "Stale" : "Current" })]),
      el("td", { class: "kb-actions" }, [view, remove])
    ]);
  }

  async function openArticle(id) {
    const card = $("kb-view");
    setStatus($("kb-articles-status"), "Opening…", "busy");
    let article;
    try {
      article = await api(API + "/articles/" + encodeURIComponent(id));
    } catch (e) {
      setStatus($("kb-articles-status"), "", null);
      showError("The article could not be opened: " + e.message);
      return;
    }
    setStatus($("kb-articles-status"), plural(state.articles.length, "article", "articles"));
    state.openId = article.id;
    setText($("kb-view-title"), article.title);
    const meta = $("kb-view-meta");
    clear(meta);
    meta.appendChild(el("span", { class: "op-chip", text: LANGUAGES[article.language] || str(article.language) }));
    meta.appendChild(el("span", { text: plural((article.chunks || []).length, "passage", "passages") }));
    meta.appendChild(el("span", { text: "Updated " + day(article.updated_at) }));
    meta.appendChild(el("span", { text: "Imported " + day(article.imported_at) }));
    meta.appendChild(linkOrText(article.url, sourceLabel(article)));
    const list = $("kb-chunks");
    clear(list);
    for (const c of article.chunks || []) {
      list.appendChild(el("li", { class: "kb-chunk", "data-testid": "kb-chunk" }, [
        el("div", { class: "kb-chunk-section", text: str(c.section) }),
        el("div", { class: "kb-chunk-text", text: str(c.text) })
      ]));
    }
    card.hidden = false;
    renderArticles();
    card.scrollIntoView({ block: "start", behavior: "smooth" });
    $("kb-view-title").focus({ preventScroll: true });
  }

  function closeArticle() {
    state.openId = null;
    $("kb-view").hidden = true;
    renderArticles();
  }

  async function removeArticle(a, button) {
    if (!window.confirm("Remove “" + str(a.title) + "” from the help centre? The bot stops citing it at once. " +
        "A later sync brings it back if it is still in its folder or sitemap.")) return;
    setBusy(button, true);
    try {
      await api(API + "/articles/" + encodeURIComponent(a.id), { method: "DELETE" });
      toast("Removed “" + str(a.title) + "”.");
      if (state.openId === a.id) closeArticle();
      await loadArticles();
    } catch (e) {
      showError("The article could not be removed: " + e.message);
      setBusy(button, false);
    }
  }

  // Import and sync ---------------------------------------------------------------------------
  function showReport(report, what) {
    const box = $("kb-import-report");
    clear(box);
    const failed = Array.isArray(report.failed) ? report.failed : [];
    const changed = (report.added || []).length + (report.updated || []).length + (report.removed || []).length;
    box.setAttribute("data-tone", failed.length && !changed ? "bad" : "good");
    box.appendChild(el("div", { class: "kb-report-summary", text: what + ": " + str(report.summary) }));
    if (failed.length) {
      const list = el("ul", { class: "kb-failures", "data-testid": "kb-failures" });
      for (const f of failed) list.appendChild(el("li", null, [el("code", { text: str(f.source) }), " — " + str(f.reason)]));
      box.appendChild(list);
    }
    box.hidden = false;
  }

  async function runImport(event) {
    event.preventDefault();
    const files = $("kb-files").files;
    const urls = $("kb-urls").value.trim();
    if (!files.length && !urls) {
      setStatus($("kb-import-status"), "Choose files or enter URLs first.", "bad");
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("urls", urls);
    form.append("language", $("kb-language").value);
    const button = $("kb-import");
    setBusy(button, true);
    setStatus($("kb-import-status"), "Importing…", "busy");
    try {
      const report = await api(API + "/import", { method: "POST", form: form });
      showReport(report, "Import");
      setStatus($("kb-import-status"), "", null);
      $("kb-files").value = "";
      if (!(report.failed || []).length) $("kb-urls").value = "";
      await Promise.all([loadArticles(), loadStale()]);
    } catch (e) {
      setStatus($("kb-import-status"), e.message, "bad");
    } finally {
      setBusy(button, false);
    }
  }

  async function runSync() {
    const button = $("kb-sync");
    setBusy(button, true);
    setStatus($("kb-articles-status"), "Syncing every folder, page and sitemap…", "busy");
    try {
      const report = await api(API + "/sync", { method: "POST" });
      showReport(report, "Sync");
      toast("Sync: " + str(report.summary));
      await Promise.all([loadArticles(), loadStale()]);
    } catch (e) {
      setStatus($("kb-articles-status"), "Sync failed", "bad");
      showError("Sync failed: " + e.message);
    } finally {
      setBusy(button, false);
    }
  }

  // Test retrieval ----------------------------------------------------------------------------
  async function runSearch(event) {
    event.preventDefault();
    const question = $("kb-question").value;
    const shots = $("kb-screenshots").files;
    if (!question.trim() && !shots.length) {
      setStatus($("kb-search-status"), "Type a question or add a screenshot.", "bad");
      return;
    }
    if (shots.length > MAX_SCREENSHOTS) {
      setStatus($("kb-search-status"), "At most " + MAX_SCREENSHOTS + " screenshots.", "bad");
      return;
    }
    const form = new FormData();
    form.append("question", question);
    for (const f of shots) form.append("screenshots", f, f.name);
    const button = $("kb-search-run");
    setBusy(button, true);
    setStatus($("kb-search-status"), shots.length ? "Reading the screenshots and searching…" : "Searching…", "busy");
    try {
      renderSearch(await api(API + "/search", { method: "POST", form: form }));
      setStatus($("kb-search-status"), "", null);
    } catch (e) {
      setStatus($("kb-search-status"), e.message, "bad");
    } finally {
      setBusy(button, false);
    }
  }

  function renderSearch(result) {
    const box = $("kb-search-result");
    clear(box);
    box.appendChild(el("p", { class: "kb-query", "data-testid": "kb-query" }, ["Query: ", el("code", { text: str(result.query) || "(nothing searchable)" })]));
    if (result.note) box.appendChild(el("p", { class: "kb-note", "data-testid": "kb-search-note", text: str(result.note) }));
    for (const s of result.screenshots || []) {
      const seen = [].concat(s.title ? [s.title] : [], s.error_codes || []).join(" · ");
      box.appendChild(el("p", { class: "kb-query", text: str(s.name) + ": " + (seen || "no title or error code read") }));
    }
    const passages = Array.isArray(result.passages) ? result.passages : [];
    if (!passages.length) {
      box.appendChild(el("p", { class: "kb-empty", "data-testid": "kb-no-passages", text: "Nothing found: the bot would answer without the help centre." }));
      return;
    }
    const list = el("ol", { class: "kb-passages", "aria-label": "Ranked passages" });
    for (const p of passages) {
      const inPrompt = isNum(p.prompt_number);
      const chips = [el("span", { class: "kb-score-value", title: "BM25 score", text: isNum(p.score) ? p.score.toFixed(2) : "—" })];
      if (inPrompt) chips.push(el("span", { class: "op-chip kb-in-prompt", text: "In the prompt as [" + p.prompt_number + "]" }));
      else if (p.below_min_score) chips.push(el("span", { class: "op-chip kb-below", text: "Below " + str(result.min_score) }));
      else chips.push(el("span", { class: "op-chip kb-below", text: "Over the budget" }));
      list.appendChild(el("li", { class: "kb-passage", "data-testid": "kb-passage", "data-in-prompt": inPrompt ? "true" : "false",
        "data-below": p.below_min_score ? "true" : "false", "data-article-id": str(p.article_id) }, [
        el("span", { class: "kb-rank", text: str(p.rank) }),
        linkOrText(p.url, str(p.title), "kb-passage-title"),
        el("span", { class: "kb-score" }, chips),
        el("span", { class: "kb-passage-section", text: str(p.section) }),
        el("span", { class: "kb-passage-text", text: str(p.text) })
      ]));
    }
    box.appendChild(list);
  }

  // Gaps and stale articles -------------------------------------------------------------------
  async function loadGaps() {
    const list = $("kb-gap-list");
    let data;
    try {
      data = await api(API + "/gaps?days=" + encodeURIComponent($("kb-gaps-days").value));
    } catch (e) {
      clear(list);
      list.appendChild(el("li", { class: "kb-empty", text: "Not loaded: " + e.message }));
      return;
    }
    clear(list);
    setText($("kb-gaps-sub"), plural(data.handovers || 0, "hand-over", "hand-overs") + " · " +
      plural(data.weak_answers || 0, "weak answer", "weak answers"));
    const groups = Array.isArray(data.groups) ? data.groups : [];
    if (!groups.length) {
      list.appendChild(el("li", { class: "kb-empty", text: "No gaps in this period: every question found something relevant." }));
      return;
    }
    for (const g of groups) {
      const kind = GROUP_KINDS[g.kind] || { label: str(g.kind), cls: "kb-kind-text" };
      const examples = el("ul", { class: "kb-examples" });
      for (const x of g.examples || []) examples.appendChild(el("li", { text: str(x.text) || "(a screenshot without text)" }));
      list.appendChild(el("li", { class: "kb-group", "data-testid": "kb-gap", "data-kind": str(g.kind) }, [
        el("div", { class: "kb-group-head" }, [
          el("span", { class: "op-chip " + kind.cls, text: kind.label }),
          el("span", { class: "kb-group-key", text: str(g.key) }),
          el("span", { class: "kb-group-count", text: plural(g.count || 0, "question", "questions") })
        ]),
        el("div", { class: "kb-group-sub", text: plural(g.handovers || 0, "hand-over", "hand-overs") + ", " +
          plural(g.weak_answers || 0, "answer", "answers") + " without a relevant passage" }),
        examples
      ]));
    }
  }

  async function loadStale() {
    const body = $("kb-stale-rows");
    let data;
    try {
      data = await api(API + "/stale");
    } catch (e) {
      clear(body);
      body.appendChild(el("tr", null, [el("td", { colspan: "3", class: "muted", text: "Not loaded: " + e.message })]));
      return;
    }
    clear(body);
    setText($("kb-stale-hint"), "Articles not updated for " + str(data.stale_days) + " days that answers cited in the last " +
      str(data.cited_days) + " days: check they are still right.");
    const rows = Array.isArray(data.articles) ? data.articles : [];
    if (!rows.length) {
      body.appendChild(el("tr", null, [el("td", { colspan: "3", class: "muted", text: "Nothing stale is being cited." })]));
      return;
    }
    for (const a of rows) {
      const title = el("button", { type: "button", class: "link-btn kb-title", text: str(a.title) });
      title.addEventListener("click", function () {
        openArticle(a.id);
      });
      body.appendChild(el("tr", { "data-testid": "kb-stale-article", "data-id": String(a.id) }, [
        el("td", null, [title]),
        el("td", { title: str(a.updated_at), text: day(a.updated_at) }),
        el("td", { class: "kb-num", text: str(a.citations) })
      ]));
    }
  }

  // Wiring ----------------------------------------------------------------------------------------
  function wire() {
    $("kb-import-form").addEventListener("submit", runImport);
    $("kb-search-form").addEventListener("submit", runSearch);
    $("kb-sync").addEventListener("click", runSync);
    $("kb-view-close").addEventListener("click", closeArticle);
    $("kb-filter").addEventListener("input", renderArticles);
    $("kb-gaps-days").addEventListener("change", loadGaps);
    $("kb-question").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSearch(e);
    });
  }
  wire();

  return {
    /** The tab was opened: load everything the first time, refresh the reports after that. */
    show: function (focus) {
      if (focus) $("knowledge-heading").focus();
      if (!state.loaded) {
        state.loaded = true;
        loadArticles();
      }
      loadGaps();
      loadStale();
    }
  };
}

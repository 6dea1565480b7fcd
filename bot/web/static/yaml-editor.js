/*
 * The operator console's template editor. Templates are long YAML files whose system prompts
 * run to lines of a few hundred characters, so the editor wraps lines, numbers them and
 * highlights keys, strings and comments: CodeMirror 5, vendored as classic scripts
 * (codemirror.js, codemirror-yaml.js) that operator.html loads before this module, with no
 * build step and nothing that needs eval under the page's CSP. When those scripts did not load,
 * the plain textarea stays in place with its own line-number gutter, and everything that uses
 * the editor works the same through the object returned here.
 */

const INDENT = 2; // spaces; YAML forbids tabs for indentation
const LINE_HEIGHT = 20; // px of one line in the plain textarea (.op-yaml / .op-gutter)
const LINE_PADDING = 12; // px left of CodeMirror's text (.cm-s-snapdesk pre.CodeMirror-line)

/**
 * templateEditor(textarea, gutter, hooks) -> {enhanced, value(), setValue(text), edit(text), focus(),
 * goToLine(n), markIssues(lines), cursor()}; hooks: change() after the operator edits, cursor()
 * when the cursor moves, save() on Ctrl/Cmd+S. setValue() loads a text (no hook, no undo past it);
 * edit() changes the text as the operator would: undoable with Ctrl/Cmd+Z, change() follows.
 */
export function templateEditor(textarea, gutter, hooks) {
  const CM = window.CodeMirror;
  if (typeof CM === "function" && CM.modes && CM.modes.yaml) return codeMirrorEditor(CM, textarea, gutter, hooks);
  return plainEditor(textarea, gutter, hooks);
}

function codeMirrorEditor(CM, textarea, gutter, hooks) {
  let quiet = false; // setValue() in progress: not an edit
  // After Esc, Tab and Shift+Tab are the browser's again (they move the focus), so the editor
  // is no keyboard trap; any other key, or leaving, gives them back to indenting.
  const leave = { Tab: false, "Shift-Tab": false };
  let marked = [];

  function indent(cm) {
    if (cm.somethingSelected()) {
      cm.indentSelection("add");
    } else {
      const col = cm.getCursor().ch;
      cm.replaceSelection(" ".repeat(INDENT - (col % INDENT)), "end", "+input");
    }
  }

  function save() {
    hooks.save();
  }

  const cm = CM.fromTextArea(textarea, {
    mode: "yaml",
    theme: "snapdesk",
    lineNumbers: true,
    lineWrapping: true,
    indentUnit: INDENT,
    tabSize: INDENT,
    indentWithTabs: false,
    inputStyle: "contenteditable",
    screenReaderLabel: "Template YAML",
    spellcheck: false,
    autocorrect: false,
    autocapitalize: false,
    extraKeys: {
      Tab: indent,
      "Shift-Tab": function (ed) {
        ed.indentSelection("subtract");
      },
      Esc: function (ed) {
        ed.removeKeyMap(leave);
        ed.addKeyMap(leave);
      },
      "Ctrl-S": save,
      "Cmd-S": save
    }
  });
  gutter.hidden = true;
  const input = cm.getInputField();
  const described = textarea.getAttribute("aria-describedby");
  if (described) input.setAttribute("aria-describedby", described);
  const label = textarea.id ? document.querySelector('label[for="' + textarea.id + '"]') : null;
  if (label) {
    label.addEventListener("click", function (e) {
      e.preventDefault();
      cm.focus();
    });
  }

  // A wrapped line continues under its own indentation, so YAML's nesting stays visible.
  cm.on("renderLine", function (ed, line, elt) {
    const indentPx = CM.countColumn(line.text, null, INDENT) * ed.defaultCharWidth();
    elt.style.textIndent = "-" + indentPx + "px";
    elt.style.paddingLeft = LINE_PADDING + indentPx + "px";
  });
  cm.on("keydown", function (_, e) {
    if (e.key !== "Escape" && e.key !== "Tab" && e.key !== "Shift") cm.removeKeyMap(leave);
  });
  cm.on("blur", function () {
    cm.removeKeyMap(leave);
  });
  cm.on("changes", function () {
    if (!quiet) hooks.change();
  });
  cm.on("cursorActivity", function () {
    hooks.cursor();
  });

  // The editor fills a box the operator can resize (.op-code): measure again when it changes.
  const box = cm.getWrapperElement().parentNode;
  if (box && typeof ResizeObserver === "function") {
    let pending = 0;
    new ResizeObserver(function () {
      if (pending) return;
      pending = requestAnimationFrame(function () {
        pending = 0;
        cm.refresh();
      });
    }).observe(box);
  }

  return {
    enhanced: true,
    value: function () {
      return cm.getValue();
    },
    setValue: function (text) {
      quiet = true;
      try {
        cm.setValue(text);
        cm.clearHistory();
      } finally {
        quiet = false;
      }
      cm.setCursor(0, 0);
      cm.scrollTo(0, 0);
      cm.refresh(); // the editor may have been hidden until now
    },
    edit: function (text) {
      const cursor = cm.getCursor();
      const scroll = cm.getScrollInfo();
      cm.replaceRange(text, CM.Pos(cm.firstLine(), 0), CM.Pos(cm.lastLine()), "+snapdesk");
      cm.setCursor(cursor);
      cm.scrollTo(scroll.left, scroll.top);
    },
    focus: function () {
      cm.focus();
    },
    goToLine: function (line) {
      const n = Math.max(1, Math.min(line, cm.lineCount())) - 1;
      cm.focus();
      cm.setSelection({ line: n, ch: 0 }, { line: n, ch: cm.getLine(n).length });
      cm.scrollIntoView({ from: { line: n, ch: 0 }, to: { line: n, ch: 0 } }, cm.getScrollInfo().clientHeight / 3);
    },
    markIssues: function (lines) {
      cm.operation(function () {
        for (const handle of marked) {
          cm.removeLineClass(handle, "gutter", "op-issue-mark");
          cm.removeLineClass(handle, "background", "op-issue-line");
        }
        marked = [];
        for (const line of lines) {
          if (line < 1 || line > cm.lineCount()) continue;
          marked.push(cm.addLineClass(line - 1, "gutter", "op-issue-mark"));
          cm.addLineClass(line - 1, "background", "op-issue-line");
        }
      });
    },
    cursor: function () {
      const c = cm.getCursor();
      return { line: c.line + 1, col: c.ch + 1 };
    }
  };
}

function plainEditor(textarea, gutter, hooks) {
  let issueLines = new Set();
  let gutterKey = "";

  function updateGutter() {
    const lines = textarea.value.split("\n").length;
    const key = lines + "|" + Array.from(issueLines).join(",");
    if (key !== gutterKey) {
      gutterKey = key;
      while (gutter.firstChild) gutter.removeChild(gutter.firstChild);
      const frag = document.createDocumentFragment();
      for (let i = 1; i <= lines; i++) {
        const span = document.createElement("span");
        if (issueLines.has(i)) span.className = "is-issue";
        span.textContent = String(i);
        frag.appendChild(span);
      }
      gutter.appendChild(frag);
    }
    gutter.scrollTop = textarea.scrollTop;
  }

  textarea.addEventListener("input", function () {
    updateGutter();
    hooks.change();
  });
  textarea.addEventListener("scroll", function () {
    gutter.scrollTop = textarea.scrollTop;
  });
  for (const ev of ["keyup", "click", "select", "focus"]) textarea.addEventListener(ev, hooks.cursor);
  textarea.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "s" || e.key === "S")) {
      e.preventDefault();
      hooks.save();
    }
  });

  return {
    enhanced: false,
    value: function () {
      return textarea.value;
    },
    setValue: function (text) {
      textarea.value = text;
      textarea.scrollTop = 0;
      textarea.scrollLeft = 0;
      try {
        textarea.setSelectionRange(0, 0);
      } catch (_) {
        /* not focused */
      }
      updateGutter();
    },
    edit: function (text) {
      const at = textarea.selectionStart;
      textarea.setRangeText(text, 0, textarea.value.length, "preserve");
      textarea.setSelectionRange(Math.min(at, text.length), Math.min(at, text.length));
      updateGutter();
      hooks.change();
    },
    focus: function () {
      textarea.focus();
    },
    goToLine: function (line) {
      const lines = textarea.value.split("\n");
      const n = Math.max(1, Math.min(line, lines.length));
      let start = 0;
      for (let i = 0; i < n - 1; i++) start += lines[i].length + 1;
      textarea.focus();
      textarea.setSelectionRange(start, start + lines[n - 1].length);
      textarea.scrollTop = Math.max(0, (n - 1) * LINE_HEIGHT - textarea.clientHeight / 3);
      textarea.scrollLeft = 0;
    },
    markIssues: function (lines) {
      issueLines = new Set(lines);
      gutterKey = "";
      updateGutter();
    },
    cursor: function () {
      const pos = textarea.selectionStart || 0;
      const before = textarea.value.slice(0, pos);
      return { line: before.split("\n").length, col: pos - before.lastIndexOf("\n") };
    }
  };
}

// The recipe form, generated from the JSON Schema the package ships (GET /api/info .schema): one control per
// schema property, its default and description shown, nothing else can be typed in. Validation is the server's
// (the CLI's own messages), shown at the field they name.
"use strict";
(() => {
  const get = (obj, parts) => parts.reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
  function set(parts, value) {
    let node = QR.doc;
    for (const key of parts.slice(0, -1)) {
      if (!node[key] || typeof node[key] !== "object" || Array.isArray(node[key])) node[key] = {};
      node = node[key];
    }
    node[parts[parts.length - 1]] = value;
  }
  function unset(parts) {
    const parent = get(QR.doc, parts.slice(0, -1));
    if (parent && typeof parent === "object") delete parent[parts[parts.length - 1]];
    // Drop sections left empty, so the saved YAML only holds what was set.
    for (let n = parts.length - 1; n > 0; n--) {
      const section = get(QR.doc, parts.slice(0, n));
      if (section && typeof section === "object" && !Array.isArray(section) && !Object.keys(section).length) {
        delete get(QR.doc, parts.slice(0, n - 1))[parts[n - 1]];
      } else break;
    }
  }
  const show = (v) => (v === null ? "null" : typeof v === "object" ? JSON.stringify(v) : String(v));
  function help(text) {
    // The schema's descriptions use `code` spans; render those, escape the rest.
    const node = QR.el("div", { class: "help" });
    String(text || "").split(/`([^`]*)`/).forEach((part, i) => node.append(i % 2 ? QR.el("code", { text: part }) : part));
    return node;
  }
  function kindOf(node) {
    if (node.oneOf) {
      const other = node.oneOf.filter((b) => b.type !== "null");
      const nullable = other.length < node.oneOf.length;
      if (other.length === 1 && other[0].type === "object") return { kind: "optional-object", schema: other[0] };
      if (other.length === 1) {
        const inner = kindOf(other[0]);
        // A nullable choice (hardware.target): null is one of the options, shown as "null".
        if (inner.kind === "select" && nullable) inner.options = [null, ...inner.options];
        return { ...inner, nullable };
      }
      const bool = other.find((b) => b.type === "boolean");
      const keyword = other.find((b) => b.type === "string" && b.enum);
      const array = other.find((b) => b.type === "array");
      if (bool && keyword) return { kind: "select", options: [...keyword.enum, true, false] };
      if (keyword && array) return { kind: "keyword-or-list", keyword: keyword.enum };
      return { kind: "text" };
    }
    if (node.enum) return { kind: "select", options: node.enum };
    if (node.type === "boolean") return { kind: "checkbox" };
    if (node.type === "integer" || node.type === "number") return { kind: "number", type: node.type };
    if (node.type === "array") return { kind: "list" };
    if (node.type === "object" && node.properties) return { kind: "object" };
    if (node.type === "object" && node.propertyNames && node.propertyNames.enum) return { kind: "mapping" };
    return { kind: "text" };
  }
  // What the person typed, as the document value. Text that is not a number stays text: the server's schema
  // check then answers with the CLI's own message ("'abc' is not of type 'number'").
  function parseNumber(text, nullable) {
    const trimmed = text.trim();
    if (nullable && /^(null|none|~)$/i.test(trimmed)) return null;
    if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(trimmed)) return Number(trimmed);
    return trimmed;
  }
  function parseList(text) { return text.split(",").map((s) => s.trim()).filter(Boolean); }

  function field(name, node, parts, required) {
    const path = parts.join(".");
    const info = kindOf(node);
    if (info.kind === "object") return section(name, node, parts, required);
    if (info.kind === "optional-object") return optionalSection(name, node, info.schema, parts);
    if (info.kind === "mapping") return mapping(name, node, parts);
    const value = get(QR.doc, parts);
    const explicit = value !== undefined;
    const current = explicit ? value : node.default;
    let control;
    const changed = (v) => { if (v === undefined) unset(parts); else set(parts, v); refresh(); QR.validateSoon(); };
    if (info.kind === "select") {
      control = QR.el("select", { "data-path": path });
      info.options.forEach((o) => control.append(QR.el("option", { value: show(o), text: show(o) })));
      if (current !== undefined) control.value = show(current);
      control.addEventListener("change", () => {
        changed(info.options.find((o) => show(o) === control.value));
      });
    } else if (info.kind === "checkbox") {
      control = QR.el("input", { type: "checkbox", "data-path": path });
      control.checked = Boolean(current);
      control.addEventListener("change", () => changed(control.checked));
    } else {
      const shown = current === undefined ? "" : Array.isArray(current) ? current.join(", ") : show(current);
      control = QR.el("input", { type: "text", "data-path": path, value: shown,
        placeholder: info.kind === "list" ? "comma-separated" : info.nullable ? "empty: default · null: none" : "" });
      control.addEventListener("input", () => {
        const text = control.value;
        if (!text.trim()) return changed(undefined);
        if (info.kind === "number") return changed(parseNumber(text, info.nullable));
        if (info.kind === "list") return changed(parseList(text));
        if (info.kind === "keyword-or-list") return changed(info.keyword.includes(text.trim()) ? text.trim() : parseList(text));
        return changed(text);
      });
    }
    const reset = QR.el("button", { type: "button", class: "reset", title: "back to the default (remove the key)",
      text: "reset", hidden: !explicit, onclick: () => { unset(parts); QR.buildForm(); QR.validateSoon(); } });
    const box = QR.el("div", { class: `field${explicit ? "" : " at-default"}`, "data-field": path },
      QR.el("label", { text: name + (required ? " *" : "") }),
      QR.el("div", { class: "control" }, control, reset,
        node.default !== undefined ? QR.el("span", { class: "default", text: `default: ${show(node.default)}` }) : null),
      help(node.description), QR.el("div", { class: "field-error" }));
    function refresh() {
      const now = get(QR.doc, parts) !== undefined;
      box.classList.toggle("at-default", !now);
      reset.hidden = !now;
    }
    return box;
  }
  function section(name, node, parts, required) {
    const box = QR.el("fieldset", { "data-field": parts.join(".") },
      QR.el("legend", {}, name + (required ? " *" : ""), " ", QR.el("span", { class: "help", text: node.description || "" })),
      QR.el("div", { class: "fieldset-error" }));
    const need = node.required || [];
    for (const [key, sub] of Object.entries(node.properties)) box.append(field(key, sub, [...parts, key], need.includes(key)));
    return box;
  }
  function optionalSection(name, node, schema, parts) {
    const present = get(QR.doc, parts);
    const enabled = present !== undefined && present !== null;
    const toggle = QR.el("input", { type: "checkbox", "data-path": parts.join(".") });
    toggle.checked = enabled;
    toggle.addEventListener("change", () => {
      if (toggle.checked) set(parts, {}); else unset(parts);
      QR.buildForm(); QR.validateSoon();
    });
    const box = QR.el("fieldset", { "data-field": parts.join(".") },
      QR.el("legend", {}, QR.el("label", {}, toggle, ` ${name}`), " ",
        QR.el("span", { class: "help", text: `${node.description || ""} (default: none)` })),
      QR.el("div", { class: "fieldset-error" }));
    if (enabled) {
      for (const [key, sub] of Object.entries(schema.properties)) {
        box.append(field(key, sub, [...parts, key], (schema.required || []).includes(key)));
      }
    }
    return box;
  }
  function mapping(name, node, parts) {
    // e.g. data.train.fields: a fixed set of allowed keys (propertyNames.enum), each an optional string.
    const box = QR.el("fieldset", { "data-field": parts.join(".") },
      QR.el("legend", {}, name, " ", help(node.description)), QR.el("div", { class: "fieldset-error" }));
    for (const key of node.propertyNames.enum) {
      box.append(field(key, { type: "string", description: `column holding "${key}" (empty: the standard name)` },
        [...parts, key], false));
    }
    return box;
  }

  QR.buildForm = function buildForm() {
    const form = QR.$("#recipe-form");
    const schema = QR.info.schema;
    form.replaceChildren();
    const loose = QR.el("fieldset", { "data-field": "" }, QR.el("legend", { text: "recipe" }),
      QR.el("div", { class: "fieldset-error" }));
    form.append(loose);
    for (const [key, sub] of Object.entries(schema.properties)) {
      const node = field(key, sub, [key], (schema.required || []).includes(key));
      (node.tagName === "FIELDSET" ? form : loose).append(node);
    }
  };

  let timer = null;
  let sequence = 0;
  QR.validateSoon = function validateSoon(delay = 350) {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++sequence;
      try {
        const result = await QR.api("/api/validate", { path: QR.$("#recipe-path").value.trim() || QR.path,
          document: QR.doc, target: QR.target() });
        if (mine === sequence) QR.showProblems(result);
      } catch (error) {
        if (mine === sequence) QR.showProblems({ ok: false, problems: [{ path: "", message: error.message, text: error.message }], warnings: [] });
      }
    }, delay);
  };

  // The element a problem's path belongs to: the field itself, else its nearest section (an unknown key
  // `training.lr` lands on the training section), else the list at the top.
  function target(path) {
    let parts = path.replace(/\[\d+\]/g, "").split(".").filter(Boolean);
    while (parts.length) {
      const node = document.querySelector(`[data-field="${CSS.escape(parts.join("."))}"]`);
      if (node) return node;
      parts = parts.slice(0, -1);
    }
    return null;
  }
  QR.showProblems = function showProblems(result) {
    document.querySelectorAll(".field-error, .fieldset-error").forEach((n) => n.replaceChildren());
    document.querySelectorAll(".field.invalid").forEach((n) => n.classList.remove("invalid"));
    const badge = QR.$("#valid-badge");
    badge.textContent = result.ok ? "ok" : `${result.problems.length} problem(s)`;
    badge.className = `badge ${result.ok ? "ok" : "bad"}`;
    QR.$("#problem-list").replaceChildren(...result.problems.map((p) => QR.el("li", { text: `error: ${p.text}` })));
    QR.$("#warning-list").replaceChildren(...(result.warnings || []).map((w) => QR.el("li", { text: `warning: ${w}` })));
    const global = QR.$("#global-problems");
    global.replaceChildren();
    for (const problem of result.problems) {
      const node = target(problem.path || "");
      const line = QR.el("div", {}, problem.path && node && node.dataset.field !== problem.path
        ? `${problem.path}: ${problem.message}` : problem.message);
      if (/^unknown key/.test(problem.message)) {
        const parts = problem.path.split(".");
        line.append(" ", QR.el("button", { type: "button", class: "reset", text: "remove it",
          onclick: () => { unset(parts); QR.buildForm(); QR.validateSoon(0); } }));
      }
      if (!node) { global.append(line); continue; }
      node.classList.add("invalid");
      node.querySelector(":scope > .field-error, :scope > .fieldset-error").append(line);
    }
    const s = result.summary;
    QR.$("#summary").replaceChildren(...(s ? [
      QR.el("p", { text: `${s.train_rows} training rows, ${s.max_steps} optimizer steps, effective batch ` +
        `${s.effective_batch}, ${s.precision} on ${s.target}${result.target_why ? ` (${result.target_why})` : ""}` }),
      QR.el("ul", {}, (result.memory || []).map((m) => QR.el("li", { text: m }))),
    ] : []));
    const rows = QR.$("#token-rows");
    if (rows && s) rows.textContent = `of ${s.train_rows}`;
  };
})();

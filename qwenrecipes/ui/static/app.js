// qwenrecipes ui: shared state, the API helper, tabs, token, recipe load/save. form.js, views.js and runs.js add
// to the QR object. No framework: the page is a handful of panels over a JSON API.
"use strict";
const QR = {
  doc: {},          // the recipe document: only keys that are set (absent = the schema default)
  path: "",         // where it was loaded from / will be saved to (relative to the project)
  info: null,
  $: (sel) => document.querySelector(sel),
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  },
  token() { return sessionStorage.getItem("qwenrecipes-token") || ""; },
  target() { return QR.$("#target").value; },
  async api(path, body, { write = false } = {}) {
    const options = { method: body === undefined ? "GET" : "POST", headers: {} };
    if (body !== undefined) {
      options.headers["content-type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    if (write) options.headers["x-qwenrecipes-token"] = QR.token();
    const response = await fetch(path, options);
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      const error = new Error(data.error || `HTTP ${response.status}`);
      error.data = data;
      error.status = response.status;
      throw error;
    }
    return data;
  },
  showTab(name) {
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === `tab-${name}`));
    if (name === "runs") QR.refreshRuns();
    if (name === "reports") QR.loadBench();
  },
  setToken(value) {
    sessionStorage.setItem("qwenrecipes-token", value.trim());
    QR.$("#token-state").textContent = value.trim() ? "token set" : "no token: read-only";
  },
  async loadRecipe(path) {
    const data = await QR.api(`/api/recipe?path=${encodeURIComponent(path)}`);
    QR.path = path;
    QR.$("#recipe-path").value = path;
    if (data.document === null) {
      QR.showProblems({ ok: false, problems: data.problems, warnings: [] });
      QR.$("#file-state").textContent = "could not be read";
      return;
    }
    QR.doc = data.document;
    QR.buildForm();
    QR.$("#file-state").textContent = `loaded ${path}`;
    QR.validateSoon(0);
  },
  async saveRecipe() {
    const path = QR.$("#recipe-path").value.trim();
    const result = await QR.api("/api/recipe/save", { path, document: QR.doc, target: QR.target() }, { write: true });
    QR.path = path;
    QR.$("#file-state").textContent = `saved ${path} (${result.bytes} bytes)`;
    QR.showProblems(result);
    return result;
  },
  fail(where, error) {
    QR.$(where).textContent = `error: ${error.message}`;
    if (error.data && error.data.problems) QR.showProblems({ ok: false, problems: error.data.problems, warnings: [] });
  },
  async boot() {
    const match = location.hash.match(/token=([^&]+)/);
    if (match) { QR.setToken(decodeURIComponent(match[1])); history.replaceState(null, "", location.pathname); }
    QR.setToken(QR.token());
    QR.$("#token").addEventListener("change", (e) => { QR.setToken(e.target.value); e.target.value = ""; });
    document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => QR.showTab(b.dataset.tab)));
    QR.$("#load-btn").addEventListener("click", () => QR.loadRecipe(QR.$("#recipe-path").value.trim())
      .catch((e) => QR.fail("#file-state", e)));
    QR.$("#save-btn").addEventListener("click", () => QR.saveRecipe().catch((e) => QR.fail("#file-state", e)));
    QR.$("#target").addEventListener("change", () => QR.validateSoon(0));
    QR.info = await QR.api("/api/info");
    QR.$("#project").textContent = `${QR.info.project} · v${QR.info.version}`;
    const list = QR.$("#recipe-list");
    QR.info.recipes.forEach((r) => list.append(QR.el("option", { value: r })));
    QR.initViews();
    QR.initRuns();
    const first = QR.info.recipes.find((r) => r.endsWith("tiny-cpu.yaml")) || QR.info.recipes[0];
    if (first) await QR.loadRecipe(first);
    else { QR.path = "recipe.yaml"; QR.$("#recipe-path").value = QR.path; QR.buildForm(); }
    document.body.dataset.ready = "1";
  },
};

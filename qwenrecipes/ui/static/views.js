// Engines tab (every engine's rendered files, memory decisions, the explain table) and Tokens tab.
"use strict";
(() => {
  const body = () => ({ path: QR.$("#recipe-path").value.trim() || QR.path, document: QR.doc, target: QR.target() });
  const cell = (v) => (v === null || v === undefined ? "-" : Array.isArray(v) ? v.join(",")
    : typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k}=${x}`).join(" ") : String(v));

  function memoryBlock(m) {
    if (!m) return null;
    const lines = [];
    if (m.estimated_peak_gib !== undefined) {
      lines.push(`~${m.estimated_peak_gib} GiB estimated, ${m.limit_gib} GiB usable of ${m.gpu_memory_gb} GB (${m.gpu_memory_source})`);
    } else lines.push(m.gpu_memory_gb === null || m.gpu_memory_gb === undefined ? "no GPU: no memory estimate" : "no estimate");
    lines.push(`checkpointing ${m.gradient_checkpointing ? "on" : "off"}, liger ${m.liger_kernel ? "on" : "off"}, ` +
      `micro-batch ${m.micro_batch_size} x accumulation ${m.gradient_accumulation_steps}`);
    const why = Object.entries(m.why || {}).map(([k, v]) => QR.el("li", { text: `${k}: ${v}` }));
    return QR.el("div", { class: "memory" }, lines.map((l) => QR.el("div", { text: l })), QR.el("ul", {}, why));
  }
  function engineCard(name, result) {
    if (result.error) return QR.el("div", { class: "engine" }, QR.el("h4", { text: name }),
      QR.el("ul", { class: "problems" }, result.error.map((e) => QR.el("li", { text: e }))));
    const pre = QR.el("pre", { class: "file" });
    const names = Object.keys(result.files).sort((a, b) => (a === result.main_file ? -1 : b === result.main_file ? 1 : 0));
    const buttons = names.map((f) => QR.el("button", { type: "button", text: f, onclick: (e) => pick(f, e.target) }));
    function pick(file, button) {
      pre.textContent = result.files[file];
      buttons.forEach((b) => b.classList.toggle("active", b === button));
    }
    pick(names[0], buttons[0]);
    return QR.el("div", { class: "engine", "data-engine": name }, QR.el("h4", { text: name }),
      QR.el("code", { text: result.command }), memoryBlock(result.memory),
      QR.el("ul", { class: "warnings" }, (result.warnings || []).map((w) => QR.el("li", { text: w }))),
      QR.el("div", { class: "files" }, buttons), pre);
  }
  function explainTable(rows, engines) {
    const head = QR.el("tr", {}, QR.el("th", { text: "setting" }), engines.map((e) => QR.el("th", { text: e })),
      QR.el("th", { text: "why" }));
    const lines = rows.map((r) => QR.el("tr", { class: r.diverges ? "diverges" : "" }, QR.el("td", { text: r.label }),
      engines.map((e) => QR.el("td", { text: cell(r.values[e]) })), QR.el("td", { class: "why", text: r.why || "" })));
    const differ = rows.filter((r) => r.diverges).length;
    return [QR.el("p", { text: differ ? `${differ} setting(s) differ between engines (highlighted).`
      : "All engines get the same effective settings." }), QR.el("table", { class: "table" }, head, lines)];
  }
  async function render() {
    QR.$("#render-state").textContent = "rendering ...";
    try {
      const result = await QR.api("/api/render", body());
      QR.$("#engines-grid").replaceChildren(...Object.entries(result.engines).map(([n, r]) => engineCard(n, r)));
      QR.$("#explain").replaceChildren(...explainTable(result.explain, result.explain_engines));
      QR.$("#render-state").textContent = `rendered ${Object.keys(result.engines).length} engines`;
    } catch (error) { QR.fail("#render-state", error); }
  }

  function tokenPanel(title, view, reference, extra) {
    const spans = view.pieces.map((piece, i) => {
      const differs = reference && (reference.ids[i] !== view.ids[i] || reference.trained[i] !== view.trained[i]);
      return QR.el("span", { class: `tok ${view.trained[i] ? "trained" : "masked"}${differs ? " differs" : ""}`,
        title: `#${i} id ${view.ids[i]} ${view.trained[i] ? "trained" : "masked (-100)"}`, text: piece });
    });
    return QR.el("div", { class: "tokens", "data-view": title }, QR.el("h4", {}, title, " ",
      QR.el("span", { class: "dim", text: `${view.count} tokens, ${view.trained_count} trained` }), extra || ""), spans);
  }
  async function tokens(engines) {
    const state = QR.$("#tokens-state");
    state.textContent = engines.length ? `running ${engines.join(", ")} in their envs (imports take a while) ...` : "";
    const row = Math.max(0, Number(QR.$("#token-row").value || 1) - 1);
    try {
      const result = engines.length
        ? await QR.api("/api/tokens/engines", { ...body(), row, engines }, { write: true })
        : await QR.api("/api/tokens", { ...body(), row });
      const panels = [tokenPanel(`reference (train_on: ${result.train_on})`, result.reference)];
      for (const [name, r] of Object.entries(result.engines)) {
        if (r.status === "error") { panels.push(QR.el("div", { class: "tokens" }, QR.el("h4", { text: name }), r.reason)); continue; }
        const verdict = QR.el("span", { class: `badge ${r.status === "mismatch" ? "bad" : "ok"}`,
          text: r.status + (r.residuals.length ? ` (${r.residuals.join(", ")})` : "") });
        panels.push(tokenPanel(name, r, result.reference, verdict));
      }
      QR.$("#token-views").replaceChildren(...panels);
      QR.$("#token-rows").textContent = `of ${result.rows}`;
      state.textContent = "";
    } catch (error) { QR.fail("#tokens-state", error); }
  }

  QR.initViews = function initViews() {
    QR.$("#render-btn").addEventListener("click", render);
    QR.$("#tokens-btn").addEventListener("click", () => tokens([]));
    const boxes = QR.$("#token-engines");
    for (const [name, present] of Object.entries(QR.info.envs)) {
      boxes.append(QR.el("label", { title: present ? "" : "no env installed: qwenrecipes env install " + name },
        QR.el("input", { type: "checkbox", value: name, disabled: !present }), ` ${name} `));
    }
    QR.$("#engine-tokens-btn").addEventListener("click", () =>
      tokens([...boxes.querySelectorAll("input:checked")].map((b) => b.value)));
  };
})();

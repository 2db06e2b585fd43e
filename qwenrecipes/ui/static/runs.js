// Runs tab (start/stop, live charts from events.jsonl over server-sent events, the runs list) and the
// Compare & bench tab. Charts are uPlot (vendored, static/vendor/uplot).
"use strict";
(() => {
  const CHARTS = {
    loss: { el: "#chart-loss", label: "loss" },
    lr: { el: "#chart-lr", label: "learning rate" },
    grad: { el: "#chart-grad", label: "grad norm" },
    tps: { el: "#chart-tps", label: "tokens/s" },
    mem: { el: "#chart-mem", label: "GB" },
  };
  let series = {};
  let plots = {};
  let source = null;
  let watching = null;

  function resetCharts() {
    series = Object.fromEntries(Object.keys(CHARTS).map((k) => [k, [[], []]]));
    for (const [key, chart] of Object.entries(CHARTS)) {
      const box = QR.$(chart.el);
      box.querySelectorAll(".uplot").forEach((n) => n.remove());
      box.dataset.points = "0";
      // Steps are whole numbers; y labels to 4 significant digits (close loss ticks and learning rates stay distinct).
      const xAxis = key === "mem" ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] };
      const yAxis = { size: 60, values: (_u, splits) => splits.map((v) => Number(v.toPrecision(4)).toString()) };
      plots[key] = new uPlot({ width: Math.max(360, box.clientWidth - 10), height: 170, legend: { show: false },
        scales: { x: { time: false } }, axes: [xAxis, yAxis], series: [{}, { label: chart.label, stroke: "#2b6cb0",
          width: 1.5, points: { size: 4 } }] }, series[key], box);
    }
  }
  function push(key, x, y) {
    if (typeof y !== "number" || !Number.isFinite(y)) return;
    const [xs, ys] = series[key];
    // One value per step (a resumed run repeats steps): keep the latest.
    if (xs.length && xs[xs.length - 1] === x) ys[ys.length - 1] = y; else { xs.push(x); ys.push(y); }
  }
  let t0 = null;
  let lastTokens = null;
  function onEvent(event) {
    if (t0 === null && typeof event.t === "number") t0 = event.t;
    if (event.type === "train" && typeof event.step === "number") {
      push("loss", event.step, event.loss);
      push("lr", event.step, event.lr);
      push("grad", event.step, event.grad_norm);
      let tps = event.tokens_per_s;
      if (tps === undefined && typeof event.tokens_seen === "number") {
        // TRL logs cumulative tokens: the rate is their change between two log events (as the CLI's bar does).
        if (lastTokens && event.t > lastTokens[0]) tps = (event.tokens_seen - lastTokens[1]) / (event.t - lastTokens[0]);
        lastTokens = [event.t, event.tokens_seen];
      }
      push("tps", event.step, tps);
      if (typeof event.memory_gb === "number" && event.memory_gb > 0) push("mem", event.t - t0, event.memory_gb);
    } else if (event.type === "rss") {
      push("mem", event.t - (t0 ?? event.t), event.rss_gb);
    } else if (event.type === "end") {
      const message = event.message && !event.message.startsWith(event.status) ? `: ${event.message}` : "";
      QR.$("#run-status").textContent = `${event.message && !message ? event.message : event.status}${message} ` +
        `(${event.steps} steps)`;
    } else if (event.type === "error") {
      QR.$("#run-output").textContent += `error: ${event.message || ""}\n`;
    }
  }
  function redraw() {
    for (const key of Object.keys(CHARTS)) {
      plots[key].setData(series[key]);
      QR.$(CHARTS[key].el).dataset.points = String(series[key][0].length);
    }
  }
  QR.watch = function watch(runDir) {
    if (source) source.close();
    watching = runDir;
    t0 = null; lastTokens = null;
    resetCharts();
    QR.$("#run-status").textContent = `watching ${runDir}`;
    source = new EventSource(`/api/runs/events?run_dir=${encodeURIComponent(runDir)}`);
    let pending = false;
    source.onmessage = (message) => {
      onEvent(JSON.parse(message.data));
      if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; redraw(); }); }
    };
    source.addEventListener("reset", () => { resetCharts(); });
    source.addEventListener("process", (message) => {
      const state = JSON.parse(message.data);
      QR.$("#run-output").textContent = state.output.join("\n");
      QR.$("#stop-btn").disabled = !state.running;
      if (!state.running && state.returncode) QR.$("#run-status").textContent += ` · qwenrecipes run exited ${state.returncode}`;
    });
    source.addEventListener("done", () => { source.close(); redraw(); QR.$("#stop-btn").disabled = true; QR.refreshRuns(); });
  };

  async function start() {
    const status = QR.$("#run-status");
    try {
      await QR.saveRecipe();
      const result = await QR.api("/api/runs/start", { recipe: QR.path, engine: QR.$("#run-engine").value,
        run_dir: QR.$("#run-dir").value.trim() || null, force: QR.$("#run-force").checked, target: QR.target() },
      { write: true });
      status.textContent = `started ${result.run_dir} (pid ${result.pid})`;
      QR.$("#stop-btn").disabled = false;
      QR.watch(result.run_dir);
      QR.refreshRuns();
    } catch (error) { QR.fail("#run-status", error); }
  }
  async function stop() {
    if (!watching) return;
    try {
      await QR.api("/api/runs/stop", { run_dir: watching }, { write: true });
      QR.$("#run-status").textContent = `stopping ${watching} ...`;
    } catch (error) { QR.fail("#run-status", error); }
  }
  const fmt = (v, digits = 4) => (typeof v === "number" ? Number(v.toPrecision(digits)).toString() : "-");
  QR.refreshRuns = async function refreshRuns() {
    let rows = [];
    try { rows = await QR.api("/api/runs"); } catch (error) { QR.fail("#run-status", error); return; }
    const head = QR.el("tr", {}, ["", "run", "engine", "status", "steps", "first loss", "final loss", "wall s", "tok/s", ""]
      .map((h) => QR.el("th", { text: h })));
    QR.$("#runs-table").replaceChildren(head, ...rows.map((r) => QR.el("tr", { "data-run": r.run_dir },
      QR.el("td", {}, QR.el("input", { type: "checkbox", class: "compare-pick", value: r.run_dir })),
      QR.el("td", { text: r.run_dir }), QR.el("td", { text: r.engine }),
      QR.el("td", { text: r.process && r.process.running ? "running" : r.status }),
      QR.el("td", { text: `${r.steps ?? "-"}/${r.total_steps ?? "?"}` }), QR.el("td", { text: fmt(r.first_loss) }),
      QR.el("td", { text: fmt(r.final_loss) }), QR.el("td", { text: fmt(r.wall_time_s, 3) }),
      QR.el("td", { text: fmt(r.tokens_per_s, 3) }),
      QR.el("td", {}, QR.el("button", { type: "button", text: "watch", onclick: () => QR.watch(r.run_dir) }),
        " ", QR.el("a", { href: `/api/file?path=${encodeURIComponent(`${r.run_dir}/engine.log`)}`, target: "_blank",
          text: "log" })))));
  };

  async function compare() {
    const picked = [...document.querySelectorAll(".compare-pick:checked")].map((b) => b.value);
    try {
      const result = await QR.api("/api/compare", { run_dirs: picked });
      const head = QR.el("tr", {}, ["engine", "steps", "first loss", "final loss", "min loss", "wall s", "tokens/s", "status", "run"]
        .map((h) => QR.el("th", { text: h })));
      const rows = result.runs.map((r) => QR.el("tr", {}, [r.engine, r.steps, fmt(r.first_loss), fmt(r.final_loss),
        fmt(r.min_loss), fmt(r.wall_time_s, 3), fmt(r.tokens_per_s, 3), r.status, r.run].map((v) => QR.el("td", { text: v ?? "-" }))));
      const spread = result.spread.final_loss === null ? "" :
        `spread across runs: first loss ${(100 * result.spread.first_loss).toFixed(2)}%, final loss ${(100 * result.spread.final_loss).toFixed(2)}%`;
      QR.$("#compare").replaceChildren(QR.el("table", { class: "table" }, head, rows), QR.el("p", { text: spread }),
        result.plot ? QR.el("img", { class: "plot", src: result.plot, alt: "loss curves" }) : "");
      QR.$("#compare-state").textContent = "";
    } catch (error) { QR.fail("#compare-state", error); }
  }
  QR.loadBench = async function loadBench() {
    try {
      const reports = await QR.api("/api/bench");
      QR.$("#bench").replaceChildren(...(reports.length ? reports.map((r) => QR.el("div", {}, QR.el("h4", { text: r.folder }),
        QR.el("div", { class: "report", text: r.report }),
        r.plots.map((p) => QR.el("img", { class: "plot", src: `/api/file?path=${encodeURIComponent(p)}`, alt: p }))))
        : [QR.el("p", { class: "dim", text: "no bench output in this project (qwenrecipes bench RECIPE -o bench-out)" })]));
    } catch (error) { QR.$("#bench").textContent = `error: ${error.message}`; }
  };
  QR.initRuns = function initRuns() {
    const select = QR.$("#run-engine");
    QR.info.engines.forEach((e) => select.append(QR.el("option", { value: e, text: e + (QR.info.envs[e] ? "" : " (no env)") })));
    const firstEnv = QR.info.engines.find((e) => QR.info.envs[e]);
    if (firstEnv) select.value = firstEnv;
    QR.$("#start-btn").addEventListener("click", start);
    QR.$("#stop-btn").addEventListener("click", stop);
    QR.$("#runs-refresh").addEventListener("click", QR.refreshRuns);
    QR.$("#compare-btn").addEventListener("click", compare);
    resetCharts();
  };
})();

/* framepool monitor dashboard: one WebSocket (/api/v1/gpu/stream), 1 Hz messages,
 * charts drawn on <canvas> by the small LineChart below. No libraries, no build step,
 * no requests to anywhere but the page's own origin. */
"use strict";

(() => {
  const WINDOW_S = 120; // seconds of history a chart keeps
  const GAP_S = 5; // a longer silence between two points breaks the line
  const STALE_S = 5; // no message for this long while connected: "stale"
  const MAX_BACKOFF_MS = 30000;
  const MAX_KERNEL_ROWS = 300;
  const MAX_ALERTS = 100;
  // Okabe-Ito: tells series apart for most kinds of colour blindness.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31", "#7F7F7F"];

  const $ = (id) => document.getElementById(id);
  const dash = { messages: 0, lastMessage: null, connected: false, charts: {} };
  window.framepoolDashboard = dash;

  // ---------- formatting ----------
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits = 1) => (isNum(v) ? v.toFixed(digits) : "–");
  const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString() : "–");
  const fmtMB = (mb) => (!isNum(mb) ? "–" : mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${mb.toFixed(0)} MiB`);
  const fmtAge = (s) => (!isNum(s) ? "–" : s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
  function fmtTime(iso, epoch) {
    const d = iso ? new Date(iso) : isNum(epoch) ? new Date(epoch * 1000) : null;
    return d && !Number.isNaN(d.getTime()) ? d.toLocaleTimeString() : "–";
  }

  /** Create an element with text and attributes; text is never parsed as HTML. */
  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  const cell = (text, cls) => el("td", text, cls ? { class: cls } : undefined);
  const chip = (state) => el("span", state || "unknown", { class: `state state-${state || "unknown"}` });
  const chipCell = (state) => {
    const td = el("td");
    td.append(chip(state));
    return td;
  };
  const row = (...cells) => {
    const tr = el("tr");
    tr.append(...cells);
    return tr;
  };

  const colours = new Map(); // series group -> colour, so a model keeps its colour in every chart
  function colourFor(group) {
    if (!colours.has(group)) colours.set(group, PALETTE[colours.size % PALETTE.length]);
    return colours.get(group);
  }
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // ---------- LineChart: time series on a canvas, last WINDOW_S seconds ----------
  class LineChart {
    /** opts: {title, unit, max (fixed y max, e.g. 100 for %), digits} */
    constructor(canvas, legend, opts) {
      this.canvas = canvas;
      this.legend = legend;
      this.opts = opts;
      this.series = new Map(); // id -> {label, colour, dashed, points: [[t, v], ...]}
      this.emptyText = "no data";
    }

    add(id, label, t, value, { group = id, dashed = false } = {}) {
      if (!isNum(value)) return;
      let s = this.series.get(id);
      if (!s) {
        s = { label, colour: colourFor(group), dashed, points: [] };
        this.series.set(id, s);
      }
      s.label = label;
      s.points.push([t, value]);
    }

    prune(now) {
      for (const [id, s] of this.series) {
        while (s.points.length && s.points[0][0] < now - WINDOW_S) s.points.shift();
        if (!s.points.length) this.series.delete(id);
      }
    }

    pointCount() {
      let n = 0;
      for (const s of this.series.values()) n += s.points.length;
      return n;
    }

    draw(now) {
      this.prune(now);
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth;
      const h = c.clientHeight;
      if (!w || !h) return;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const pad = { l: 46, r: 10, t: 10, b: 22 };
      const pw = w - pad.l - pad.r;
      const ph = h - pad.t - pad.b;
      let ymax = this.opts.max || 0;
      if (!this.opts.max) {
        for (const s of this.series.values()) for (const p of s.points) ymax = Math.max(ymax, p[1]);
        ymax = niceCeil(ymax * 1.1);
      }
      const x = (t) => pad.l + ((t - (now - WINDOW_S)) / WINDOW_S) * pw;
      const y = (v) => pad.t + ph - (Math.min(v, ymax) / ymax) * ph;

      g.font = `11px ${cssVar("--font") || "sans-serif"}`;
      g.lineWidth = 1;
      g.strokeStyle = cssVar("--grid");
      g.fillStyle = cssVar("--muted");
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (let i = 0; i <= 4; i++) {
        const v = (ymax * i) / 4;
        g.beginPath();
        g.moveTo(pad.l, Math.round(y(v)) + 0.5);
        g.lineTo(w - pad.r, Math.round(y(v)) + 0.5);
        g.stroke();
        g.fillText(shortNum(v), pad.l - 6, y(v));
      }
      g.textAlign = "center";
      g.textBaseline = "top";
      for (let s = WINDOW_S; s >= 0; s -= 30) g.fillText(s ? `-${s}s` : "now", x(now - s), h - pad.b + 6);

      if (!this.series.size) {
        g.textBaseline = "middle";
        g.fillText(this.emptyText, pad.l + pw / 2, pad.t + ph / 2);
      }
      g.lineWidth = 2;
      g.lineJoin = "round";
      for (const s of this.series.values()) {
        g.strokeStyle = s.colour;
        g.setLineDash(s.dashed ? [6, 4] : []);
        g.beginPath();
        let prev = null;
        for (const [t, v] of s.points) {
          if (prev === null || t - prev > GAP_S) g.moveTo(x(t), y(v));
          else g.lineTo(x(t), y(v));
          prev = t;
        }
        g.stroke();
        if (s.points.length === 1) {
          const [t, v] = s.points[0];
          g.fillStyle = s.colour;
          g.fillRect(x(t) - 2, y(v) - 2, 4, 4);
        }
      }
      g.setLineDash([]);
      this.renderLegend();
    }

    renderLegend() {
      const unit = this.opts.unit || "";
      const items = [];
      const spoken = [];
      for (const s of this.series.values()) {
        const last = s.points[s.points.length - 1][1];
        const li = el("li");
        const sw = el("span", null, { class: `swatch${s.dashed ? " dashed" : ""}`, "aria-hidden": "true" });
        sw.style.color = s.colour;
        li.append(sw, el("span", s.label), el("span", `${fmt(last, this.opts.digits ?? 1)}${unit}`, { class: "value" }));
        items.push(li);
        spoken.push(`${s.label} ${fmt(last, this.opts.digits ?? 1)}${unit}`);
      }
      this.legend.replaceChildren(...items);
      this.canvas.setAttribute(
        "aria-label",
        `${this.opts.title}, last ${WINDOW_S} seconds: ${spoken.length ? spoken.join("; ") : "no data"}`,
      );
    }
  }

  /** The smallest "round" maximum >= v whose quarters are round too (4 grid steps). */
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const step = v / 4;
    const p = 10 ** Math.floor(Math.log10(step));
    for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (step <= m * p) return 4 * m * p;
    return 40 * p;
  }
  function shortNum(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return `${+v.toFixed(v < 10 ? 2 : 0)}`;
  }

  const chart = (name, opts) => new LineChart($(`chart-${name}`), $(`legend-${name}`), opts);
  const charts = {
    gpu_utilization: chart("gpu-util", { title: "GPU utilization", unit: "%", max: 100 }),
    gpu_memory: chart("gpu-mem", { title: "GPU memory used", unit: "%", max: 100 }),
    throughput: chart("throughput", { title: "Throughput", unit: " f/s" }),
    latency: chart("latency", { title: "Latency", unit: " ms" }),
    queue_depth: chart("queue", { title: "Queue depth", unit: "", digits: 0 }),
  };
  function drawCharts(now) {
    for (const [name, c] of Object.entries(charts)) {
      c.draw(now);
      dash.charts[name] = c.pointCount();
    }
  }

  // ---------- panels ----------
  const deviceLabel = (d) => `${d.hostname || "?"} · GPU ${d.index ?? "?"}`;

  function renderDevices(msg, now) {
    const devices = Array.isArray(msg.devices) ? msg.devices : [];
    $("no-gpu").hidden = msg.gpu_available !== false;
    const emptyText = msg.gpu_available === false ? "no GPU on this cluster" : "no data";
    charts.gpu_utilization.emptyText = charts.gpu_memory.emptyText = emptyText;
    const rows = [];
    for (const d of devices) {
      const key = d.key || deviceLabel(d);
      let mem = d.memory_percent;
      if (!isNum(mem) && isNum(d.memory_used_mb) && d.memory_total_mb > 0) mem = (100 * d.memory_used_mb) / d.memory_total_mb;
      charts.gpu_utilization.add(key, deviceLabel(d), now, d.utilization_percent, { group: `dev:${key}` });
      charts.gpu_memory.add(key, deviceLabel(d), now, mem, { group: `dev:${key}` });
      rows.push(row(
        cell(key, "mono"),
        cell(d.name || "–"),
        cell(fmt(d.utilization_percent), "num"),
        cell(`${fmtMB(d.memory_used_mb)} / ${fmtMB(d.memory_total_mb)} (${fmt(mem)}%)`, "num"),
        cell(fmt(d.temperature_c, 0), "num"),
        cell(fmt(d.power_w, 0), "num"),
        cell((d.workers || []).join(", ")),
      ));
    }
    if (!rows.length) rows.push(emptyRow(7, msg.gpu_available === false ? "No GPU on this cluster." : "No device readings."));
    $("devices").tBodies[0].replaceChildren(...rows);
  }

  function renderModels(msg, now) {
    const models = msg.models || {};
    const queues = msg.queues || {};
    const ids = [...new Set([...Object.keys(models), ...Object.keys(queues)])].sort();
    const rows = [];
    for (const id of ids) {
      const m = models[id] || {};
      const q = queues[id] || {};
      const opts = { group: `model:${id}` };
      charts.throughput.add(id, id, now, m.frames_per_s, opts);
      charts.latency.add(`${id}:p50`, `${id} p50`, now, m.p50_ms, opts);
      charts.latency.add(`${id}:p99`, `${id} p99`, now, m.p99_ms, { ...opts, dashed: true });
      charts.queue_depth.add(id, id, now, q.depth, opts);
      const dropped = Object.entries(q.dropped || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
      rows.push(row(
        cell(id, "mono"),
        chipCell(m.state || "absent"),
        cell(fmtInt(m.frames), "num"),
        cell(fmt(m.frames_per_s), "num"),
        cell(fmt(m.p50_ms), "num"),
        cell(fmt(m.p99_ms), "num"),
        cell(fmtInt(m.errors), "num"),
        cell(fmt(m.batch_size_avg), "num"),
        cell(fmtInt(q.depth), "num"),
        cell(fmt(q.oldest_age_s, 2), "num"),
        cell(dropped || "–"),
      ));
    }
    if (!rows.length) rows.push(emptyRow(11, "No models served or queued."));
    $("models").tBodies[0].replaceChildren(...rows);
    return ids.length;
  }

  function renderWorkers(msg) {
    const workers = Array.isArray(msg.workers) ? msg.workers : [];
    const rows = workers.map((w) => {
      const models = Object.entries(w.models || {}).map(([id, st]) => `${id} (${st})`).join(", ");
      return row(cell(w.name, "mono"), cell(w.hostname, "nowrap"), chipCell(w.state), cell(w.device, "nowrap"),
        cell(fmtAge(w.age_s), "num"), cell(models || "–"));
    });
    if (!rows.length) rows.push(emptyRow(6, "No live workers."));
    $("workers").tBodies[0].replaceChildren(...rows);
    return workers.length;
  }

  const emptyRow = (span, text) => row(el("td", text, { colspan: String(span), class: "note" }));

  // ---------- kernels: sortable, filterable ----------
  const kernelState = { rows: [], key: "total_time_ms", dir: -1 };
  const TEXT_KEYS = new Set(["name", "device_type", "last_execution"]);

  function compareKernels(a, b) {
    const { key, dir } = kernelState;
    const av = a[key];
    const bv = b[key];
    if (av === bv) return String(a.name).localeCompare(String(b.name));
    if (av === null || av === undefined) return 1; // missing values last, either direction
    if (bv === null || bv === undefined) return -1;
    const c = TEXT_KEYS.has(key) ? String(av).localeCompare(String(bv)) : av - bv;
    return c * dir;
  }

  function renderKernels() {
    const needle = $("kernel-filter").value.trim().toLowerCase();
    const shown = kernelState.rows
      .filter((k) => !needle || String(k.name).toLowerCase().includes(needle))
      .sort(compareKernels)
      .slice(0, MAX_KERNEL_ROWS);
    const rows = shown.map((k) =>
      row(
        cell(k.name, "mono kernel-name"),
        cell(k.device_type || "–"),
        cell(fmtInt(k.total_calls), "num"),
        cell(fmt(k.avg_time_ms, 3), "num"),
        cell(fmt(k.total_time_ms, 2), "num"),
        cell(fmt(k.avg_memory_mb, 2), "num"),
        cell(fmtTime(k.last_execution)),
      ),
    );
    $("kernels").tBodies[0].replaceChildren(...rows);
    const empty = $("kernels-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = kernelState.rows.length ? "No kernel matches the filter." : "No kernel profiles yet.";
  }

  function setupKernelTable() {
    for (const th of $("kernels").tHead.rows[0].cells) {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.key;
        if (kernelState.key === key) kernelState.dir = -kernelState.dir;
        else kernelState.dir = TEXT_KEYS.has(key) && key !== "last_execution" ? 1 : -1;
        kernelState.key = key;
        for (const other of th.parentElement.cells) other.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", kernelState.dir > 0 ? "ascending" : "descending");
        renderKernels();
      });
    }
    $("kernel-filter").addEventListener("input", renderKernels);
  }

  // ---------- alerts: kept by (id, started_at), newest first ----------
  const alerts = new Map(); // key -> {data, node}

  function alertNode(a) {
    const li = el("li");
    li.append(el("span", null, { class: "sev" }), el("span", null, { class: "msg" }), el("time", null, { class: "when" }));
    li.append(el("span", null, { class: "detail" }));
    return li;
  }

  function fillAlert(node, a) {
    const sev = a.severity === "critical" ? "critical" : "warning";
    const resolved = a.state === "resolved";
    node.className = `alert alert-${sev}${resolved ? " resolved" : ""}`;
    node.dataset.id = a.id || "";
    node.dataset.severity = sev;
    node.dataset.state = a.state || "active";
    const [s, msg, when, detail] = node.children;
    s.textContent = sev;
    msg.textContent = a.message || a.rule || a.id;
    when.textContent = fmtTime(a.timestamp, a.started_at);
    if (a.timestamp) when.setAttribute("datetime", a.timestamp);
    const value = isNum(a.value) ? ` = ${fmt(a.value)}` : "";
    const end = resolved ? ` · resolved ${fmtTime(null, a.resolved_at)}` : " · active";
    detail.textContent = `${a.subject || "?"} · ${a.metric || a.rule || ""}${value}${end}`;
  }

  function mergeAlerts(msg) {
    const list = $("alerts");
    const incoming = [...(msg.active_alerts || []), ...(msg.alerts || [])]; // fired/resolved last: they win
    for (const a of incoming) {
      if (!a || typeof a !== "object") continue;
      const key = `${a.id}@${a.started_at ?? a.timestamp}`;
      let entry = alerts.get(key);
      if (!entry) {
        entry = { data: a, node: alertNode(a) };
        alerts.set(key, entry);
        const t = isNum(a.started_at) ? a.started_at : Date.now() / 1000;
        entry.node.dataset.started = String(t);
        const after = [...list.children].find((n) => Number(n.dataset.started) < t);
        list.insertBefore(entry.node, after || null);
      }
      entry.data = a;
      fillAlert(entry.node, a);
    }
    if (Array.isArray(msg.active_alerts)) {
      // An alert we saw active that the server no longer lists has ended (maybe while we were away).
      const live = new Set(msg.active_alerts.map((a) => `${a.id}@${a.started_at ?? a.timestamp}`));
      for (const [key, e] of alerts) {
        if (e.data.state !== "resolved" && !live.has(key)) {
          e.data = { ...e.data, state: "resolved" };
          fillAlert(e.node, e.data);
        }
      }
    }
    while (alerts.size > MAX_ALERTS) {
      const last = list.lastElementChild; // the oldest
      for (const [key, e] of alerts) if (e.node === last) alerts.delete(key);
      last.remove();
    }
    $("alerts-empty").hidden = alerts.size > 0;
  }

  // ---------- one stream message ----------
  let lastReceived = 0;

  function handle(msg) {
    dash.messages += 1;
    dash.lastMessage = msg;
    if (!msg || msg.type !== "gpu_metrics") return;
    const now = Date.now() / 1000;
    lastReceived = now;
    renderDevices(msg, now);
    const nModels = renderModels(msg, now);
    const nWorkers = renderWorkers(msg);
    kernelState.rows = Array.isArray(msg.kernels) ? msg.kernels.slice() : [];
    renderKernels();
    mergeAlerts(msg);
    drawCharts(now);
    $("sum-workers").textContent = String(nWorkers);
    $("sum-models").textContent = String(nModels);
    const active = msg.active_alert_count ?? (msg.active_alerts || []).length;
    $("sum-alerts").textContent = String(active);
    $("sum-updated").textContent = fmtTime(msg.timestamp) === "–" ? new Date().toLocaleTimeString() : fmtTime(msg.timestamp);
    if (dash.connected) setConn("live", "Live");
  }

  // ---------- connection: reconnect with capped exponential backoff ----------
  let attempt = 0;
  let retryAt = 0;
  let retryNote = "";

  function setConn(kind, text) {
    const p = $("conn");
    p.className = `conn conn-${kind}`;
    if ($("conn-text").textContent !== text) $("conn-text").textContent = text;
  }

  function streamUrl() {
    const page = new URL(window.location.href);
    const url = new URL("api/v1/gpu/stream", page);
    url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    const token = page.searchParams.get("token");
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  function connect() {
    retryAt = 0;
    setConn("connecting", attempt ? `Reconnecting (attempt ${attempt + 1})…` : "Connecting…");
    let ws;
    try {
      ws = new WebSocket(streamUrl());
    } catch (err) {
      scheduleReconnect(`cannot open stream: ${err.message}`);
      return;
    }
    let opened = false;
    ws.onopen = () => {
      opened = true;
      attempt = 0;
      dash.connected = true;
      lastReceived = Date.now() / 1000;
      setConn("live", "Live");
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not JSON: ignore, the next message will do
      }
      handle(msg);
    };
    ws.onclose = (ev) => {
      dash.connected = false;
      const hasToken = new URL(window.location.href).searchParams.has("token");
      let why = ev.reason || (opened ? `closed, code ${ev.code}` : "stream unreachable");
      if (!opened && !hasToken) why += "; if the monitor has API_TOKEN set, open this page with ?token=…";
      scheduleReconnect(why);
    };
  }

  function scheduleReconnect(why) {
    attempt += 1;
    const base = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (attempt - 1));
    const delay = base * (0.75 + Math.random() * 0.5);
    retryAt = Date.now() + delay;
    retryNote = why;
    tick();
    setTimeout(connect, delay);
  }

  /** Once a second: countdown while disconnected, stale warning, charts keep sliding. */
  function tick() {
    const now = Date.now() / 1000;
    if (retryAt) {
      const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      setConn("down", `Disconnected (${retryNote}); retrying in ${s} s`);
    } else if (dash.connected && lastReceived && now - lastReceived > STALE_S) {
      setConn("stale", `Connected, no data for ${Math.round(now - lastReceived)} s`);
    }
    if (now - lastReceived > 1.5) drawCharts(now);
  }

  let resizeQueued = false;
  window.addEventListener("resize", () => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      drawCharts(Date.now() / 1000);
    });
  });

  setupKernelTable();
  renderKernels();
  drawCharts(Date.now() / 1000);
  setInterval(tick, 1000);
  connect();
})();

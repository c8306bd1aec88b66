// The operator's console: streams live, the event history, an alert's clip and feedback.
// Everything shown comes from /api/* and is set as text, never parsed as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="csrf-token"]').content;
const charts = new Map();
let feedbackOn = false;
let shown = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function fmt(x, digits = 3) {
  return typeof x === "number" ? x.toFixed(digits) : "-";
}

function utc(t) {
  return typeof t === "string" ? t.replace("T", " ").replace("Z", "") : "-";
}

function feedbackText(counts) {
  const parts = Object.entries(counts || {}).map(([label, n]) => `${n} marked ${label}`);
  return parts.length ? parts.join(", ") : "none yet";
}

function card(s) {
  const c = el("div", null, "card");
  c.dataset.stream = s.id;
  const head = el("div", null, "card-head");
  head.append(el("h2", s.id), el("span", s.state, "state"));
  const model = s.model || {};
  const lines = el("dl");
  for (const [k, v] of [
    ["model", `${model.file || "?"} (${model.sha256 || "?"}, ${model.profile || "?"})`],
    ["threshold", fmt(s.threshold)],
    ["input level", s.level_dbfs === null ? "-" : `${s.level_dbfs} dBFS`],
    ["last alert", s.last_alert ? utc(s.last_alert.time) : "none"],
    ["model in words", model.words || "-"],
    ["feedback", feedbackText(s.feedback)],
  ]) {
    lines.append(el("dt", k), el("dd", v));
  }
  const plot = el("div", null, "plot");
  c.append(head, lines, plot);
  return c;
}

function updateCard(c, s) {
  c.className = `card state-${s.state}`;
  c.querySelector(".state").textContent = s.state;
  const dds = c.querySelectorAll("dd");
  const model = s.model || {};
  dds[0].textContent = `${model.file || "?"} (${model.sha256 || "?"}, ${model.profile || "?"})`;
  dds[1].textContent = fmt(s.threshold);
  dds[2].textContent = s.level_dbfs === null ? "-" : `${s.level_dbfs} dBFS`;
  dds[3].textContent = s.last_alert ? utc(s.last_alert.time) : "none";
  dds[4].textContent = model.words || "-";
  dds[5].textContent = feedbackText(s.feedback);
  const xs = s.series.map((p) => p[0]);
  const ys = s.series.map((p) => p[1]);
  const th = s.series.map(() => s.threshold);
  const data = [xs, ys, th];
  let chart = charts.get(s.id);
  if (!chart && window.uPlot) {
    chart = new uPlot({
      width: 340, height: 140,
      series: [{}, { label: "score", stroke: "#1f6feb", width: 1 },
               { label: "threshold", stroke: "#d1242f", dash: [5, 4], width: 1 }],
      axes: [{}, { size: 50 }],
      legend: { show: false },
    }, data, c.querySelector(".plot"));
    charts.set(s.id, chart);
  } else if (chart) {
    chart.setData(data);
  }
}

async function refreshStreams() {
  try {
    const doc = await getJSON("/api/streams");
    document.getElementById("connection").textContent = "live";
    document.getElementById("memory-note").hidden = doc.history !== "memory";
    feedbackOn = doc.feedback;
    document.getElementById("submit-off").hidden = doc.submit;
    document.getElementById("analyse-form").hidden = !doc.submit;
    const box = document.getElementById("cards");
    const select = document.getElementById("filter-stream");
    for (const s of doc.streams) {
      let c = box.querySelector(`[data-stream="${CSS.escape(s.id)}"]`);
      if (!c) {
        c = card(s);
        box.append(c);
        const o = el("option", s.id);
        o.value = s.id;
        select.append(o);
      }
      updateCard(c, s);
    }
  } catch (err) {
    document.getElementById("connection").textContent = `no answer from the monitor (${err.message})`;
  }
}

async function refreshEvents() {
  const stream = document.getElementById("filter-stream").value;
  const age = document.getElementById("filter-since").value;
  const q = new URLSearchParams({ limit: "200" });
  if (stream) q.set("stream", stream);
  if (age) q.set("since", String(Date.now() / 1000 - Number(age)));
  const doc = await getJSON(`/api/events?${q}`);
  const rows = document.getElementById("event-rows");
  rows.replaceChildren(...doc.events.map((e) => {
    const tr = el("tr", null, `event event-${e.event}`);
    tr.dataset.id = e.event_id;
    const score = typeof e.score === "number" ? `${fmt(e.score)} / ${fmt(e.threshold)}` : "-";
    tr.append(el("td", utc(e.time)), el("td", e.stream), el("td", e.event), el("td", score),
              el("td", e.cause || ""), el("td", e.label || ""));
    tr.addEventListener("click", () => openEvent(e.event_id));
    return tr;
  }));
  document.getElementById("no-events").hidden = doc.events.length > 0;
}

async function openEvent(id) {
  const e = await getJSON(`/api/events/${encodeURIComponent(id)}`);
  shown = e;
  const base = `/api/events/${encodeURIComponent(id)}`;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = `${e.event} on ${e.stream}, ${utc(e.time)}`;
  const dl = document.getElementById("detail-fields");
  dl.replaceChildren();
  for (const [k, v] of [
    ["score / threshold", `${fmt(e.score)} / ${fmt(e.threshold)}`],
    ["cause", e.cause || "-"],
    ["level", typeof e.level_db === "number" ? `${e.level_db > 0 ? "+" : ""}${e.level_db} dB against the ${e.level_ref || "model"}'s reference` : "-"],
    ["file", e.file || "-"],
    ["event id", e.event_id],
  ]) {
    dl.append(el("dt", k), el("dd", v));
  }
  const bands = document.getElementById("bands");
  bands.replaceChildren(...(e.bands || []).map((b) =>
    el("li", `${Math.round(b.low_hz)}-${Math.round(b.high_hz)} Hz ${b.db > 0 ? "+" : ""}${fmt(b.db, 1)} dB`)));
  if (!(e.bands || []).length) bands.append(el("li", "none given", "muted"));
  const audio = document.getElementById("clip");
  const img = document.getElementById("spectrogram");
  document.getElementById("clip-box").hidden = !e.clip;
  document.getElementById("no-clip").hidden = e.clip;
  if (e.clip) {
    audio.src = `${base}/clip.wav`;
    img.src = `${base}/spectrogram.png`;
  } else {
    audio.removeAttribute("src");
    img.removeAttribute("src");
  }
  drawScores(e);
  showLabel(e);
}

function drawScores(e) {
  const box = document.getElementById("score-plot");
  box.replaceChildren();
  const pts = e.scores || [];
  if (!pts.length || !window.uPlot) return;
  const xs = pts.map((p) => p[0]);
  new uPlot({
    width: 600, height: 160,
    series: [{ label: "s" }, { label: "score", stroke: "#1f6feb" },
             { label: "threshold", stroke: "#d1242f", dash: [5, 4] }],
    scales: { x: { time: false } },
    legend: { show: false },
  }, [xs, pts.map((p) => p[1]), pts.map(() => e.threshold)], box);
}

function showLabel(e) {
  document.getElementById("label").textContent = e.label ? `marked ${e.label}` : "not marked";
  const history = (e.labels || []).map((l) => `${l.label} (${l.source}${l.note ? ": " + l.note : ""})`);
  document.getElementById("feedback-note").textContent = feedbackOn
    ? (history.length ? `Changes: ${history.join(", ")}` : "")
    : "Feedback is off: set [ui] feedback = true in the config to mark alerts.";
  for (const b of ["mark-normal", "mark-fault"]) document.getElementById(b).disabled = !feedbackOn;
}

async function mark(label) {
  if (!shown) return;
  const r = await fetch(`/api/events/${encodeURIComponent(shown.event_id)}/feedback`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": TOKEN },
    body: JSON.stringify({ label, note: "" }),
  });
  const doc = await r.json();
  if (!r.ok) {
    document.getElementById("feedback-note").textContent = doc.error;
    return;
  }
  shown = { ...shown, ...doc };
  showLabel(shown);
  refreshEvents();
}

async function analyse(ev) {
  ev.preventDefault();
  const file = document.getElementById("analyse-file").files[0];
  const status = document.getElementById("analyse-status");
  if (!file) {
    status.textContent = "choose a wav file first";
    return;
  }
  status.textContent = `analysing ${file.name}...`;
  const form = new FormData();
  form.append("data_file", file, file.name);
  const r = await fetch("/submit?scores=1", { method: "POST", body: form });
  const doc = await r.json();
  if (!doc.scores) {
    status.textContent = `${file.name}: ${doc.error || r.status}`;
    return;
  }
  status.textContent = "";
  document.getElementById("analyse-result").hidden = false;
  const verdict = document.getElementById("verdict");
  verdict.textContent = doc.verdict;
  verdict.className = `verdict-${doc.verdict}`;
  const above = doc.scores.filter((s) => s[3]).length;
  document.getElementById("analyse-summary").textContent =
    `${file.name}: ${doc.scores.length} windows scored, ${above} above the threshold ` +
    `${fmt(doc.threshold)}${doc.error ? "; " + doc.error : ""}`;
  const amulet = { Analysis: doc.Analysis };
  if (doc.error) Object.assign(amulet, { verdict: doc.verdict, error: doc.error });
  const link = document.getElementById("amulet-json");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(amulet, null, 2)], { type: "application/json" }));
  link.download = `${file.name.replace(/\.wav$/i, "")}.json`;
  const box = document.getElementById("analyse-plot");
  box.replaceChildren();
  const xs = doc.scores.map((s) => s[1]);
  const top = Math.max(...doc.scores.map((s) => s[2]));
  new uPlot({
    width: 900, height: 260,
    scales: { x: { time: false } },
    series: [{ label: "s" },
             { label: "score", stroke: "#1f6feb" },
             { label: "threshold", stroke: "#d1242f", dash: [5, 4] },
             { label: "above", stroke: "rgba(207,34,46,0)", fill: "rgba(207,34,46,0.25)", paths: uPlot.paths.stepped({ align: 1 }) }],
    axes: [{ label: "end of window, s" }, { size: 50 }],
  }, [xs, doc.scores.map((s) => s[2]), doc.scores.map(() => doc.threshold),
      doc.scores.map((s) => (s[3] ? top : null))], box);
  box.dataset.shaded = String(above);
}

function route() {
  const page = ["#events", "#analyse"].includes(location.hash) ? location.hash.slice(1) : "streams";
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== page;
  if (page === "events") refreshEvents();
}

window.addEventListener("hashchange", route);
document.getElementById("filters").addEventListener("change", refreshEvents);
document.getElementById("mark-normal").addEventListener("click", () => mark("normal"));
document.getElementById("mark-fault").addEventListener("click", () => mark("fault"));
document.getElementById("analyse-form").addEventListener("submit", analyse);
route();
refreshStreams();
setInterval(refreshStreams, 2000);
setInterval(() => { if (location.hash === "#events" && !shown) refreshEvents(); }, 5000);

// llmops-stream web console. Every value from the server goes into the page as text
// (el() appends strings as text nodes; no innerHTML anywhere), so questions, answers,
// passages, comments and tenant names cannot become markup.
"use strict";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const params = new URLSearchParams(location.search);
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const WINDOWS = ["15m", "1h", "6h", "24h", "7d", "30d"];
let config = { actions: false, actions_message: "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "value") node.value = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined || value === "") return "-";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en");
    return value.toFixed(digits === undefined ? 2 : digits);
  }
  if (Array.isArray(value)) return value.map((v) => fmt(v, digits)).join(", ");
  return String(value);
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "(none)");
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)))))),
  );
}

const num = (value, digits) => el("td", { class: "num" }, fmt(value, digits));
const clip = (text) => el("td", { class: "clip", title: text || "" }, text || "");
const traceLink = (id) => el("a", { href: "/trace?id=" + encodeURIComponent(id) }, id);

async function api(path, options) {
  const began = performance.now();
  const response = await fetch(path, options);
  let body;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: "HTTP " + response.status };
  }
  body.__ms = performance.now() - began;
  if (!response.ok) {
    const error = new Error(body.error || "HTTP " + response.status);
    error.status = response.status;
    throw error;
  }
  return body;
}

function showError(where, error) {
  // A failed request is the server's message; anything else is a bug in this page, so
  // it goes to the console too (the browser test fails on console errors).
  if (error.status === undefined) console.error(error);
  where.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
}

function fail(error) {
  if (error.status === undefined) console.error(error);
  main.append(el("p", { class: "error" }, String(error.message || error)));
}

function windowSelect(name, current) {
  return el("select", { name: name || "since" }, WINDOWS.map((w) => el("option", { value: w, selected: w === current }, w)));
}

function field(label, input) {
  return el("label", {}, label, input);
}

// --- charts (uPlot) ---------------------------------------------------------------

function lineChart(title, series, unit) {
  // series: {name: [[unixSeconds, value], ...]} -> one aligned table for uPlot.
  const names = Object.keys(series).sort();
  const box = el("div", { class: "panel chart" }, el("h2", {}, title));
  if (!names.length) return box.appendChild(el("p", { class: "muted" }, "No data in this window yet.")), box;
  const xs = [...new Set(names.flatMap((n) => series[n].map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  for (const n of names) {
    const ys = new Array(xs.length).fill(null);
    for (const [x, y] of series[n]) ys[index.get(x)] = y;
    data.push(ys);
  }
  const target = el("div", {});
  box.appendChild(target);
  const opts = {
    width: Math.min(1100, Math.max(600, main.clientWidth - 60)),
    height: 260,
    scales: scalesFor(xs),
    axes: [{}, { label: unit, size: 60 }],
    ...(unit === "score" ? { scales: { ...scalesFor(xs), y: { range: (u, lo, hi) => [Math.min(0, lo), Math.max(1, hi)] } } } : {}),
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: xs.length < 40 } }))],
  };
  new uPlot(opts, data, target);
  return box;
}

// One point alone would stretch the time axis over years: show a minute either side.
const scalesFor = (xs) => ({ x: xs.length > 1 ? { time: true } : { time: true, range: [xs[0] - 60, xs[0] + 60] } });

const epoch = (text) => Date.parse(text.replace(" ", "T") + "Z") / 1000;

// --- pages ---------------------------------------------------------------------------

async function overview() {
  const since = params.get("since") || "1h";
  const tenant = params.get("tenant") || "";
  const form = el(
    "form",
    { class: "filters", id: "overview-filters" },
    field("window", windowSelect("since", since)),
    field("tenant", el("input", { name: "tenant", value: tenant, placeholder: "all" })),
    el("button", { type: "submit" }, "Show"),
  );
  const body = el("div", { id: "overview-body" });
  main.replaceChildren(el("h1", {}, "Overview"), form, body);
  let timer = null;
  async function refresh() {
    try {
      const d = await api("/api/overview?" + new URLSearchParams({ since, tenant }));
      renderOverview(body, d);
      statusLine.textContent = "updated " + new Date().toLocaleTimeString() + " (every 10 s; " + d.__ms.toFixed(0) + " ms)";
    } catch (e) {
      showError(body, e);
    }
    timer = setTimeout(() => { if (!document.hidden) refresh(); else timer = setTimeout(refresh, 10000); }, 10000);
  }
  window.addEventListener("pagehide", () => clearTimeout(timer));
  await refresh();
}

function renderOverview(body, d) {
  const open = d.alerts.filter((a) => !a.resolved);
  const e2e = d.end_to_end || {};
  const q = e2e.q || [];
  const parts = [];
  if (open.length) {
    parts.push(
      el("div", { class: "alerts-open", id: "open-alerts" },
        el("strong", {}, open.length + " open alert(s): "),
        open.map((a) => el("div", {}, a.raised_at.slice(0, 19) + " " + a.kind + " " + a.check_name + " " + a.subject + ": " + a.message)),
        el("a", { href: "/alerts" }, "see all alerts")),
    );
  }
  const card = (label, value) => el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  const cost = d.cost.reduce((s, r) => s + r.cost_usd, 0);
  const tokens = d.cost.reduce((s, r) => s + r.input_tokens + r.output_tokens, 0);
  parts.push(
    el("div", { class: "cards" },
      card("requests (last " + d.since + ")", fmt(e2e.requests || 0)),
      card("failed requests", fmt(e2e.errors || 0)),
      card("end-to-end p50 ms", fmt(q[0])),
      card("end-to-end p95 ms", fmt(q[1])),
      card("cost USD", fmt(cost, 6)),
      card("tokens", fmt(tokens))),
  );
  const latency = {};
  for (const r of d.latency_series) (latency[r.stage + " p95"] ||= []).push([epoch(r.t), r.q[1]]);
  parts.push(lineChart("p95 latency per stage over time", latency, "ms"));
  parts.push(el("div", { class: "panel" }, el("h2", {}, "Requests, errors and latency per stage"),
    table(["stage", "events", "errors", "error %", "p50 ms", "p95 ms", "p99 ms"],
      [...d.latency.map((r) => [r.stage, num(r.events), num(r.errors), num(100 * (r.error_rate || 0), 1), num(r.q[0]), num(r.q[1]), num(r.q[2])]),
        ...(e2e.requests ? [[el("strong", {}, "end to end"), num(e2e.requests), num(e2e.errors), num(100 * e2e.errors / e2e.requests, 1), num(q[0]), num(q[1]), num(q[2])]] : [])],
      "No telemetry in this window yet.")));
  parts.push(el("div", { class: "panel", id: "lag" }, el("h2", {}, "Consumer lag per stage (messages)"),
    table(["stage", "partitions", "total lag", "max lag", "peak total", "sampled at"],
      d.lag.map((r) => [r.stage, num(r.partitions), num(r.total_lag), num(r.max_lag), num(r.peak_lag), String(r.last_sample).slice(0, 19)]),
      "No lag samples in this window.")));
  parts.push(el("div", { class: "panel" }, el("h2", {}, "Tokens and cost per tenant and model"),
    table(["tenant", "model", "events", "tokens in", "tokens out", "cost USD", "unpriced"],
      d.cost.map((r) => [r.tenant, r.model, num(r.events), num(r.input_tokens), num(r.output_tokens), num(r.cost_usd, 6), num(r.unpriced)]))));
  const feedback = {};
  for (const r of d.feedback_series) (feedback[r.version] ||= []).push([epoch(r.t), r.mean_score]);
  parts.push(el("div", { class: "panel" }, el("h2", {}, "Feedback per prompt version"),
    table(["prompt version", "name", "type", "label", "ratings", "mean score"],
      d.feedback.map((r) => [r.template_version ? r.template_id + "@" + r.template_version : r.template_id, r.name, r.data_type, r.category || "", num(r.events), num(r.mean_score, 3)]))));
  parts.push(lineChart("Mean feedback score per prompt version over time", feedback, "score"));
  body.replaceChildren(...parts);
}

const SEARCH_FIELDS = ["since", "from", "to", "tenant", "status", "prompt", "label", "mode", "conversation", "text"];

async function traces() {
  const get = (n, d) => params.get(n) || d || "";
  const form = el(
    "form",
    { class: "filters", id: "trace-search" },
    field("window", windowSelect("since", get("since", "24h"))),
    field("from (UTC)", el("input", { type: "datetime-local", name: "from", value: get("from") })),
    field("to (UTC)", el("input", { type: "datetime-local", name: "to", value: get("to") })),
    field("tenant", el("input", { name: "tenant", value: get("tenant"), size: 10 })),
    field("status", el("select", { name: "status" }, ["", "ok", "error"].map((s) => el("option", { value: s, selected: s === get("status") }, s || "any")))),
    field("prompt id or version", el("input", { name: "prompt", value: get("prompt"), size: 12 })),
    field("label", el("input", { name: "label", value: get("label"), size: 10 })),
    field("retrieval", el("select", { name: "mode" }, ["", "dense", "bm25", "hybrid"].map((s) => el("option", { value: s, selected: s === get("mode") }, s || "any")))),
    field("conversation", el("input", { name: "conversation", value: get("conversation"), size: 10 })),
    field("words in question or answer", el("input", { name: "text", value: get("text"), size: 24, id: "search-text", title: "whole words, any order, case aside: all in the question or all in the answer" })),
    el("button", { type: "submit", id: "search-button" }, "Search"),
  );
  const result = el("div", { id: "trace-results" });
  main.replaceChildren(el("h1", {}, "Traces"), form, result);
  const query = new URLSearchParams();
  for (const n of SEARCH_FIELDS) if (get(n)) query.set(n, get(n));
  try {
    const d = await api("/api/traces?" + query);
    result.replaceChildren(
      el("p", { class: "muted", id: "search-timing" }, d.traces.length + " trace(s) from " + d.from + " to " + d.to + " UTC; query " + d.query_ms + " ms, page " + d.__ms.toFixed(0) + " ms"),
      el("div", { class: "panel" }, table(
        ["started", "trace", "tenant", "status", "total ms", "prompt", "label", "retrieval", "question", "answer"],
        d.traces.map((t) => [el("td", { class: "nowrap" }, t.first_started.slice(5, 19)), traceLink(t.trace_id), t.tenant,
          el("span", { class: t.outcome === "error" ? "error" : "ok" }, t.outcome), num(t.total_ms),
          t.prompt_id ? t.prompt_id + "@" + t.prompt_version : "", t.served_label, t.mode, clip(t.asked), clip(t.answered)]),
        "No trace matches.")),
    );
  } catch (e) {
    showError(result, e);
  }
}

const conversationLink = (id, tenant) => el("a", { href: "/conversation?" + new URLSearchParams({ id, tenant }) }, id);

async function conversations() {
  const since = params.get("since") || "24h";
  const tenant = params.get("tenant") || "";
  main.replaceChildren(el("h1", {}, "Conversations"), el("form", { class: "filters" },
    field("window", windowSelect("since", since)),
    field("tenant", el("input", { name: "tenant", value: tenant, placeholder: "all", size: 12 })),
    el("button", { type: "submit" }, "Show")));
  try {
    const d = await api("/api/conversations?" + new URLSearchParams({ since, tenant }));
    main.append(el("div", { class: "panel", id: "conversations" }, table(
      ["last turn", "conversation", "tenant", "turns", "failed", "first turn", "last question"],
      d.conversations.map((c) => [el("td", { class: "nowrap" }, c.last_turn.slice(5, 19)), conversationLink(c.conversation_id, c.tenant), c.tenant,
        num(c.turns), num(c.failed), c.first_turn.slice(5, 19), clip(c.last_question)]),
      "No conversation had a turn in the last " + since + ".")));
  } catch (e) {
    fail(e);
  }
}

async function conversation() {
  const id = params.get("id") || "";
  const tenant = params.get("tenant") || "default";
  main.replaceChildren(el("h1", {}, "Conversation ", el("code", { id: "conversation-id" }, id)));
  let d;
  try {
    d = await api("/api/conversation?" + new URLSearchParams({ id, tenant }));
  } catch (e) {
    fail(e);
    return;
  }
  const s = d.state;
  const traces = new Map(d.traces.map((t) => [t.trace_id, t]));
  main.append(el("p", { class: "muted" }, "tenant " + s.tenant + " · turns answered " + s.turn_count + " (remembered: the last " + s.turns.length + ") · last active " + s.updated_at.slice(0, 19) + " UTC" +
    (s.in_flight ? " · being answered: " + s.in_flight + ", waiting: " + s.pending.length : "")));
  main.append(el("div", { class: "panel", id: "summary" }, el("h2", {}, "Rolling summary"),
    s.summary ? el("pre", { id: "conversation-summary" }, s.summary)
      : el("p", { class: "muted", id: "conversation-summary" }, "No summary yet: every turn still fits in the memory."),
    el("p", { class: "muted" }, "Summarizes the turns older than those below" +
      (s.unsummarized.length ? "; " + s.unsummarized.length + " turn(s) left the memory and wait for the next summary" : "") + ".")));
  const first = s.turn_count - s.turns.length + 1;
  main.append(el("div", { class: "panel", id: "turns" }, table(["turn", "at", "question", "searched as", "answer", "cited", "trace", "total ms"],
    s.turns.map((t, i) => {
      const found = traces.get(t.trace_id);
      return [num(first + i), t.at.slice(11, 19), t.question, t.standalone && t.standalone !== t.question ? t.standalone : "", clip(t.answer),
        (t.citations || []).join(", "), traceLink(t.trace_id), found ? num(found.total_ms) : "-"];
    }), "No turn remembered.")));
}

async function trace() {
  const id = params.get("id") || "";
  main.replaceChildren(el("h1", {}, "Trace ", el("code", {}, id)));
  let d;
  try {
    d = await api("/api/trace?" + new URLSearchParams({ id }));
  } catch (e) {
    fail(e);
    return;
  }
  const rows = d.stages;
  if (!rows.length && !d.feedback.length) {
    main.append(el("p", { class: "muted" }, "No telemetry or feedback for this trace (yet: the sink writes about once a second)."));
  }
  const question = rows.find((r) => r.question);
  const generation = rows.filter((r) => r.stage === "generation");
  const first = rows[0] || {};
  if (question) main.append(el("div", { class: "panel" }, el("h2", {}, "Question"), el("pre", { id: "question" }, question.question)));
  if (rows.length) {
    main.append(el("p", { class: "muted" }, "tenant " + first.tenant + " · prompt " + (first.template_id || "-") + "@" + (first.template_version || "-") +
      (first.label ? " (label " + first.label + ")" : "") + (first.experiment ? " · experiment " + first.experiment + " arm " + first.arm : ""),
      ...(first.conversation_id ? [" · conversation ", conversationLink(first.conversation_id, first.tenant)] : [])));
    main.append(waterfall(rows));
  }
  const retrieval = rows.filter((r) => r.passage_ids && r.passage_ids.length);
  const cited = new Set(generation.flatMap((r) => r.citations || []));
  // The text of each passage the model got (kept by the generation stage's telemetry).
  const texts = new Map(generation.flatMap((r) => Object.entries(r.passage_texts || {})));
  const kept = generation.some((r) => r.rendered_prompt);
  for (const r of retrieval) {
    main.append(el("div", { class: "panel", id: "passages" }, el("h2", {}, "Passages (" + (r.retrieval_mode || "dense") + ")"),
      table(["rank", "passage", "fused score", "dense", "BM25", "cited", "text sent to the model"],
        r.passage_ids.map((p, i) => [num(i + 1), p, num(r.passage_scores[i], 4), num((r.dense_scores || [])[i], 4), num((r.bm25_scores || [])[i], 4),
          el("td", { class: cited.has(p) ? "cited" : "muted" }, cited.has(p) ? "cited" : ""), passageText(texts.get(p), kept)]))));
  }
  for (const g of generation.filter((r) => r.rendered_prompt)) {
    main.append(el("div", { class: "panel" }, el("h2", {}, "Rendered prompt"), el("pre", { class: "prompt", id: "rendered-prompt" }, g.rendered_prompt)));
  }
  if (generation.length && !kept) {
    main.append(el("p", { class: "muted", id: "no-payloads" }, "The rendered prompt and passage texts of this trace were not kept (LLMOPS_TELEMETRY__KEEP_PAYLOADS)."));
  }
  for (const g of generation) {
    main.append(el("div", { class: "panel" }, el("h2", {}, "Answer"), el("pre", { id: "answer" }, g.answer || "(no answer)"),
      el("p", {}, "citations: " + ((g.citations || []).join(", ") || "-"))));
  }
  main.append(el("div", { class: "panel" }, el("h2", {}, "Tokens and cost per LM call"),
    table(["stage", "model", "tokens in", "tokens out", "cost USD", "priced"],
      rows.filter((r) => r.model).map((r) => [r.stage, r.model, num(r.input_tokens), num(r.output_tokens), num(r.cost_usd, 6), String(r.priced)]))));
  main.append(el("div", { class: "panel", id: "feedback" }, el("h2", {}, "Feedback"),
    table(["at", "name", "type", "score", "label", "user", "comment", "linked"],
      d.feedback.map((f) => [f.occurred_at.slice(0, 19), f.name, f.data_type, num(f.score, 3), f.category, f.user, f.comment, String(f.trace_seen)]))));
  main.append(el("div", { class: "panel" }, el("h2", {}, "Dead letters of this trace"), lettersTable(d.letters, false)));
  main.append(el("div", { class: "panel" }, el("h2", {}, "Every row (JSON)"),
    [...rows.map((r) => ["telemetry", r.stage, r]), ...d.feedback.map((f) => ["feedback", f.name, f]), ...d.letters.map((l) => ["dead letter", l.stage, l])]
      .map(([kind, name, row]) => el("details", {}, el("summary", {}, kind + " · " + name), el("pre", {}, JSON.stringify(row, null, 2))))));
}

function passageText(text, kept) {
  if (text === undefined) return el("td", { class: "muted" }, kept ? "(not sent: over the prompt budget)" : "-");
  return el("td", { class: "passage-text" }, el("details", {}, el("summary", {}, text.length > 90 ? text.slice(0, 90) + "…" : text), el("pre", {}, text)));
}

function waterfall(rows) {
  const t0 = Math.min(...rows.map((r) => Date.parse(r.started_at.replace(" ", "T") + "Z")));
  const t1 = Math.max(...rows.map((r) => Date.parse(r.ended_at.replace(" ", "T") + "Z")));
  const span = Math.max(t1 - t0, 1);
  return el("div", { class: "panel waterfall", id: "waterfall" }, el("h2", {}, "Stages (" + fmt(span) + " ms end to end)"),
    rows.map((r) => {
      const start = Date.parse(r.started_at.replace(" ", "T") + "Z") - t0;
      const bar = el("div", { class: "wf-bar" + (r.status === "error" ? " error" : ""), title: r.stage + " " + r.latency_ms + " ms" });
      bar.style.left = (100 * start / span) + "%";
      bar.style.width = Math.max(0.3, 100 * r.latency_ms / span) + "%";
      return el("div", { class: "wf-row stage-" + r.stage }, el("span", {}, r.stage), el("div", { class: "wf-track" }, bar),
        el("span", { class: r.status === "error" ? "error" : "" }, fmt(r.latency_ms) + " ms" + (r.status === "error" ? " " + r.error_class : "")));
    }));
}

function lettersTable(letters, selectable) {
  return table(
    [selectable ? "replay" : "", "at", "letter", "stage", "from", "error", "reason", "tries", "trace", "original"],
    letters.map((l) => [
      selectable ? el("input", { type: "checkbox", class: "pick", value: l.event_id, disabled: l.truncated, title: l.truncated ? "truncated: cannot be replayed" : "" }) : "",
      el("td", { class: "nowrap" }, l.occurred_at.slice(5, 19).replace("T", " ")), el("code", {}, l.event_id), l.stage, l.topic + "@" + l.partition + ":" + l.offset,
      l.error_type, clip(l.reason), num(l.attempts), el("td", { class: "clip" }, traceLink(l.trace_id)),
      el("details", {}, el("summary", {}, (l.original_text !== undefined ? "text" : "base64") + (l.truncated ? " (truncated)" : "")),
        el("pre", { class: "original" }, l.original_text !== undefined ? l.original_text : l.original_base64)),
    ]),
    "No dead letters.",
  );
}

async function deadletters() {
  const since = params.get("since") || "24h";
  const stage = params.get("stage") || "";
  const form = el("form", { class: "filters" },
    field("window", windowSelect("since", since)),
    field("stage", el("input", { name: "stage", value: stage, placeholder: "any", size: 12 })),
    el("button", { type: "submit" }, "Show"));
  const list = el("div", { class: "panel", id: "letters" }, el("p", { class: "muted" }, "Reading the dead-letter topic…"));
  const token = el("input", { type: "password", id: "token", placeholder: "console token", autocomplete: "off", disabled: !config.actions });
  const dry = el("button", { type: "button", id: "dry-run", disabled: !config.actions }, "Dry run for the selected");
  const outcome = el("div", { id: "replay-outcome" });
  const actions = el("div", { class: "panel" }, el("h2", {}, "Replay"),
    config.actions ? el("p", { class: "muted" }, "Sends the originals back to the topics they failed on, as `llmops dlq replay --id …` does. A dry run comes first.")
      : el("p", { class: "notice", id: "actions-off" }, config.actions_message),
    token, " ", dry, outcome);
  main.replaceChildren(el("h1", {}, "Dead letters"), form, actions, list);
  let letters = [];
  try {
    letters = (await api("/api/deadletters?" + new URLSearchParams({ since, stage }))).letters;
    list.replaceChildren(el("p", { class: "muted" }, letters.length + " letter(s) in the last " + since), lettersTable(letters, true));
  } catch (e) {
    showError(list, e);
  }
  const picked = () => [...list.querySelectorAll("input.pick:checked")].map((c) => c.value);
  const send = (dryRun, ids) => api("/api/deadletters/replay", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: token.value, ids, since: "30d", dry_run: dryRun }),
  });
  dry.addEventListener("click", async () => {
    const ids = picked();
    outcome.replaceChildren();
    if (!ids.length) return outcome.append(el("p", { class: "error" }, "Select the letters to replay first."));
    try {
      const d = await send(true, ids);
      const confirm = el("button", { type: "button", class: "danger", id: "confirm-replay" }, "Replay " + d.would_replay.length + " letter(s) now");
      outcome.replaceChildren(
        el("p", { id: "dry-run-result" }, "Dry run: would replay " + d.would_replay.length + " letter(s)" + (d.missing.length ? "; not found: " + d.missing.join(", ") : "")),
        table(["letter", "stage", "to topic", "trace"], d.would_replay.map((l) => [el("code", {}, l.event_id), l.stage, l.topic, l.trace_id])),
        confirm);
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          const done = await send(false, ids);
          outcome.append(el("p", { class: "ok", id: "replay-result" }, "replayed " + done.replayed + " dead letter(s)"));
        } catch (e) {
          outcome.append(el("p", { class: "error", id: "replay-result" }, String(e.message)));
        }
      });
    } catch (e) {
      outcome.replaceChildren(el("p", { class: "error", id: "dry-run-result" }, String(e.message)));
    }
  });
}

async function prompts() {
  main.replaceChildren(el("h1", {}, "Prompts"));
  let d;
  try {
    d = await api("/api/prompts");
  } catch (e) {
    fail(e);
    return;
  }
  const served = d.labels.find((l) => l.label === d.serve_label);
  main.append(el("p", { class: "muted" }, served ? "Workers serve label " + d.serve_label + " → " + served.version
    : "No " + d.serve_label + " label yet: workers answer with the built-in prompt (" + d.builtin + ")."));
  main.append(el("div", { class: "panel", id: "labels" }, el("h2", {}, "Labels and their history"),
    table(["label", "version", "moved at", "by", "reason", "earlier versions (oldest first)"],
      d.labels.map((l) => [el("strong", {}, l.label), el("code", {}, l.version), l.moved_at.slice(0, 19), l.moved_by, l.reason, l.history.join(" → ")]),
      "No labels.")));
  main.append(el("div", { class: "panel", id: "versions" }, el("h2", {}, "Versions"),
    table(["version", "name", "model", "temp", "k", "retrieval", "HyDE", "labels", "description"],
      d.versions.map((p) => [el("code", {}, p.version), p.name, p.model || "(worker)", num(p.temperature, 1), num(p.top_k), p.retrieval_mode, p.hyde, p.labels.join(", "), p.description]),
      "The registry is empty (llmops prompts push FILE).")));
  for (const e of d.experiments) {
    main.append(el("div", { class: "panel experiment", "data-experiment": e.name }, el("h2", {}, "Experiment " + e.name + " (" + e.status + ")"),
      el("p", { class: "muted" }, "since " + e.started_at.slice(0, 19) + (e.ended_at ? " until " + e.ended_at.slice(0, 19) : "") +
        " · margin " + e.margin + " · at least " + e.min_samples + " ratings per arm · α " + e.alpha + (e.auto_rollback ? " · rolls back automatically" : "") + (e.reason ? " · " + e.reason : "")),
      table(["arm", "split", "queries", "failed", "ratings", "mean rating", "95% interval", "p95 ms", "USD per query", "verdict"],
        (e.results.length ? e.results : e.arms.map((a) => ({ arm: a.label, weight: a.weight, ci95: [] }))).map((r) => [r.arm, num(r.weight), num(r.queries), num(r.failed), num(r.ratings),
          num(r.mean_rating, 3), r.ci95 && r.ci95[0] !== null && r.ci95[0] !== undefined ? "[" + fmt(r.ci95[0]) + ", " + fmt(r.ci95[1]) + "]" : "-",
          num(r.p95_ms, 0), num(r.cost_per_query_usd, 6), el("span", { title: r.detail || "" }, r.verdict || "-")])),
      e.status === "running" ? experimentStopper(e) : null));
  }
  const options = d.versions.map((p) => p.version);
  const a = el("select", { name: "a", id: "diff-a" }, options.map((v, i) => el("option", { value: v, selected: i === 0 }, v)));
  const b = el("select", { name: "b", id: "diff-b" }, options.map((v, i) => el("option", { value: v, selected: i === Math.min(1, options.length - 1) }, v)));
  const out = el("div", { class: "diff", id: "diff" });
  const go = el("button", { type: "button", id: "diff-button", disabled: options.length < 1 }, "Diff");
  go.addEventListener("click", async () => {
    try {
      const diff = await api("/api/prompts/diff?" + new URLSearchParams({ a: a.value, b: b.value }));
      out.replaceChildren(diff.lines.length
        ? el("pre", {}, diff.lines.map((line, i) => el("span", { class: i < 2 || line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, line)))
        : el("p", { class: "muted" }, diff.a + " and " + diff.b + " are the same version"));
    } catch (e) {
      showError(out, e);
    }
  });
  main.append(el("div", { class: "panel" }, el("h2", {}, "Diff two versions"), field("from", a), " ", field("to", b), " ", go, out));
  main.append(labelMover(d, options));
}

function experimentStopper(e) {
  // As `llmops experiments stop NAME --reason ...`: a check first, then the stop.
  const reason = el("input", { class: "stop-reason", placeholder: "reason (kept with the experiment)", size: 30, disabled: !config.actions });
  const token = el("input", { type: "password", class: "stop-token", placeholder: "console token", autocomplete: "off", disabled: !config.actions });
  const check = el("button", { type: "button", class: "stop-check", disabled: !config.actions }, "Stop this experiment…");
  const out = el("div", { class: "stop-outcome" });
  const send = (dryRun) => api("/api/experiments/stop", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: token.value, name: e.name, reason: reason.value, dry_run: dryRun }),
  });
  check.addEventListener("click", async () => {
    try {
      const plan = await send(true);
      const confirm = el("button", { type: "button", class: "danger stop-confirm" }, "Stop " + plan.experiment + " now");
      out.replaceChildren(el("p", { class: "stop-plan" }, "Stopping " + plan.experiment + ": every request for label " + plan.control + " is served by " + plan.control + " again, with no split."), confirm);
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          const done = await send(false);
          out.append(el("p", { class: "ok stop-result" }, "experiment " + done.experiment + " stopped"));
        } catch (err) {
          out.append(el("p", { class: "error stop-result" }, String(err.message)));
        }
      });
    } catch (err) {
      out.replaceChildren(el("p", { class: "error stop-plan" }, String(err.message)));
    }
  });
  return el("div", { class: "stopper" }, config.actions ? null : el("p", { class: "notice" }, config.actions_message),
    field("reason", reason), " ", field("token", token), " ", check, out);
}

function labelMover(d, options) {
  // As `llmops prompts label NAME REF --reason ...`: a check first, then the move.
  const name = el("input", { id: "move-label", list: "label-names", placeholder: "label", size: 14, disabled: !config.actions });
  const names = el("datalist", { id: "label-names" }, d.labels.map((l) => el("option", { value: l.label })));
  const to = el("select", { id: "move-to", disabled: !config.actions }, options.map((v) => el("option", { value: v }, v)));
  const reason = el("input", { id: "move-reason", placeholder: "reason (kept in the history)", size: 30, disabled: !config.actions });
  const token = el("input", { type: "password", id: "label-token", placeholder: "console token", autocomplete: "off", disabled: !config.actions });
  const check = el("button", { type: "button", id: "move-check", disabled: !config.actions || !options.length }, "Check the move");
  const out = el("div", { id: "move-outcome" });
  const send = (dryRun) => api("/api/prompts/label", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: token.value, label: name.value, ref: to.value, reason: reason.value, dry_run: dryRun }),
  });
  check.addEventListener("click", async () => {
    try {
      const plan = await send(true);
      const confirm = el("button", { type: "button", class: "danger", id: "confirm-move" }, "Move " + plan.label + " now");
      out.replaceChildren(el("p", { id: "move-plan" }, "label " + plan.label + ": " + (plan.was || "(new)") + " → " + plan.version), confirm);
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          const done = await send(false);
          out.append(el("p", { class: "ok", id: "move-result" }, "label " + done.label + " -> " + done.version));
        } catch (e) {
          out.append(el("p", { class: "error", id: "move-result" }, String(e.message)));
        }
      });
    } catch (e) {
      out.replaceChildren(el("p", { class: "error", id: "move-plan" }, String(e.message)));
    }
  });
  return el("div", { class: "panel" }, el("h2", {}, "Move a label"),
    config.actions ? el("p", { class: "muted" }, "Workers use a moved label on their next request.") : el("p", { class: "notice" }, config.actions_message),
    names, field("label", name), " ", field("to version", to), " ", field("reason", reason), " ", field("token", token), " ", check, out);
}

async function alerts() {
  const since = params.get("since") || "7d";
  main.replaceChildren(el("h1", {}, "Alerts"), el("form", { class: "filters" }, field("window", windowSelect("since", since)), el("button", { type: "submit" }, "Show")));
  let d;
  try {
    d = await api("/api/alerts?" + new URLSearchParams({ since }));
  } catch (e) {
    fail(e);
    return;
  }
  if (!d.alerts.length) main.append(el("p", { class: "muted", id: "no-alerts" }, "No incidents raised in the last " + since + "."));
  for (const a of d.alerts) {
    main.append(el("div", { class: "panel incident" + (a.resolved ? "" : " alerts-open") },
      el("h2", {}, (a.resolved ? "resolved · " : "OPEN · ") + a.kind + " · " + a.check_name + " · " + a.subject),
      el("p", {}, "raised " + a.raised_at.slice(0, 19) + " UTC: " + a.message + " (incident " + a.alert_id + ")"),
      table(["at", "event", "value", "threshold", "p-value", "window", "message"],
        a.events.map((e) => [e.occurred_at.slice(0, 19), e.event_type, num(e.value, 4), num(e.threshold, 4), num(e.p_value, 4),
          e.window_start.slice(0, 19) + " – " + e.window_end.slice(11, 19), e.message]))));
  }
}

const PAGES = { "/": overview, "/traces": traces, "/trace": trace, "/conversations": conversations, "/conversation": conversation, "/deadletters": deadletters, "/prompts": prompts, "/alerts": alerts };

async function start() {
  const page = location.pathname.replace(/\/+$/, "") || "/";
  const active = page === "/" ? "overview" : page === "/trace" ? "traces" : page === "/conversation" ? "conversations" : page.slice(1);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === active);
  try {
    config = await api("/api/config");
  } catch (e) {
    statusLine.textContent = "config: " + e.message;
  }
  await (PAGES[page] || overview)();
  document.body.dataset.loaded = "1";
}

start();

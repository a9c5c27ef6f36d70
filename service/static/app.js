// Tome's page: plain JavaScript over the job API. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const KEY_STORE = "tome.apiKey";
const FORCE_POLL = new URLSearchParams(location.search).get("transport") === "poll";

let following = null; // {id, ctrl, timer, ended}
let shownDocument = null; // {id, data}
let shownJob = null;

class ApiError extends Error {
  constructor(title, detail, status) {
    super(detail ? `${title}: ${detail}` : title);
    this.title = title;
    this.detail = detail;
    this.status = status;
  }
}

// ---- API ----------------------------------------------------------------------------------------------------

function authHeaders(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function problem(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    /* not JSON */
  }
  const title = (body && body.title) || response.statusText || `HTTP ${response.status}`;
  const detail = (body && body.detail) || "";
  return new ApiError(title, detail, response.status);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (err) {
    throw new ApiError("Network error", `the API could not be reached (${err.message})`, 0);
  }
  if (!response.ok) throw await problem(response);
  return response.status === 204 ? null : response.json();
}

// ---- messages ----------------------------------------------------------------------------------------------

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : String(err.message || err);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmt = new Intl.NumberFormat();

// ---- the key -----------------------------------------------------------------------------------------------

function loadKey() {
  const remembered = localStorage.getItem(KEY_STORE);
  const key = remembered || sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").value = key;
  $("remember-key").checked = Boolean(remembered);
}

function saveKey() {
  const key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORE, key);
  if ($("remember-key").checked && key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
}

// ---- upload and ask ----------------------------------------------------------------------------------------

let chosenFile = null;

function chooseFile(file) {
  chosenFile = file || null;
  $("file-name").textContent = file ? `${file.name} (${fmt.format(file.size)} bytes)` : "";
}

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (!file) return;
    try {
      $("file").files = event.dataTransfer.files;
    } catch (_) {
      /* older browsers: keep our own reference */
    }
    chooseFile(file);
  });
}

async function submit(event) {
  event.preventDefault();
  clearError();
  saveKey();
  const questions = $("questions").value.split("\n").map((q) => q.trim()).filter(Boolean);
  if (!chosenFile) return showError(new Error("Choose a document to upload first."));
  if (!questions.length) return showError(new Error("Write at least one question (one per line)."));
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Uploading…";
  try {
    const form = new FormData();
    form.append("file", chosenFile, chosenFile.name);
    const doc = await api("/v1/documents", { method: "POST", body: form });
    button.textContent = "Submitting…";
    const body = {
      document_id: doc.id,
      task: { kind: "qa", questions },
      strategy: $("strategy").value,
      max_answer_tokens: Number($("max-tokens").value) || 64,
    };
    const job = await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    await openJob(job);
    refreshJobs();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
    button.textContent = "Upload and ask";
  }
}

// ---- following a job: SSE over fetch (the key goes in a header), polling as the fallback ---------------------

function stopFollowing() {
  if (!following) return;
  following.ended = true;
  if (following.ctrl) following.ctrl.abort();
  if (following.timer) clearTimeout(following.timer);
  following = null;
}

function follow(jobId) {
  stopFollowing();
  const state = { id: jobId, ctrl: new AbortController(), timer: null, ended: false };
  following = state;
  if (FORCE_POLL || !window.ReadableStream || !window.TextDecoderStream) poll(state);
  else stream(state);
}

async function stream(state) {
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(state.id)}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal: state.ctrl.signal,
    });
    if (!response.ok) throw await problem(response);
    if (!response.body) throw new Error("no response body");
    $("progress-via").textContent = "Live: Server-Sent Events";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        onEvent(state, block);
      }
    }
    if (!state.ended) poll(state); // closed before the end (a proxy, the stream's time limit): keep going
  } catch (err) {
    if (state.ended) return;
    if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
      showError(err);
      return;
    }
    poll(state);
  }
}

function onEvent(state, block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length || state.ended) return;
  const payload = JSON.parse(data.join("\n"));
  if (name === "progress") renderProgress(payload);
  else if (name === "end") {
    state.ended = true;
    jobEnded(payload);
  }
}

function poll(state) {
  if (state.ended || following !== state) return;
  $("progress-via").textContent = "Polling every second";
  api(`/v1/jobs/${encodeURIComponent(state.id)}`)
    .then((job) => {
      if (state.ended) return;
      renderProgress({ ...job, progress: job.progress });
      if (TERMINAL.has(job.status)) {
        state.ended = true;
        jobEnded(job);
      } else state.timer = setTimeout(() => poll(state), 1000);
    })
    .catch((err) => {
      if (err.status >= 400 && err.status < 500) showError(err);
      else state.timer = setTimeout(() => poll(state), 2000);
    });
}

// ---- rendering a job ----------------------------------------------------------------------------------------

function renderProgress(state) {
  $("progress").hidden = false;
  const p = state.progress || { done: 0, total: 0, message: null };
  const bar = $("progress-bar");
  if (p.total > 0) {
    bar.max = p.total;
    bar.value = Math.min(p.done, p.total);
  } else if (TERMINAL.has(state.status)) {
    bar.max = 1;
    bar.value = 1;
  } else bar.removeAttribute("value"); // indeterminate while queued
  const step = p.total > 0 ? ` (${p.done} of ${p.total})` : "";
  $("progress-text").textContent = `${state.status}${p.message ? `: ${p.message}` : ""}${step}`;
  $("progress").dataset.status = state.status;
  const route = [];
  if (state.strategy) route.push(`Strategy ${state.strategy}`);
  if (state.reason) route.push(state.reason);
  if (state.document_tokens) route.push(`${fmt.format(state.document_tokens)} document tokens`);
  if (state.runs > 1) route.push(`run ${state.runs}${state.resumed_from ? `, resumed at ${state.resumed_from}` : ""}`);
  $("progress-route").textContent = route.join(" · ");
  $("cancel").hidden = TERMINAL.has(state.status);
}

function jobEnded(job) {
  shownJob = job;
  renderProgress(job);
  if (job.status === "failed") showError(new ApiError("Job failed", job.error || "no reason given"));
  renderAnswers(job);
  refreshJobs();
}

function costLine(cost) {
  if (!cost) return "";
  const parts = [`${fmt.format(cost.calls)} model call${cost.calls === 1 ? "" : "s"}`];
  parts.push(`${fmt.format(cost.tokens_read)} tokens read`);
  if (cost.tokens_generated !== undefined) parts.push(`${fmt.format(cost.tokens_generated)} generated`);
  parts.push(`${Number(cost.seconds).toFixed(1)} s`);
  return parts.join(" · ");
}

const STOP = new Set(
  "the a an and or of to in on at for with by from is was were are be been it its this that as his her their".split(" "),
);
const SHADE_LIMIT = 5000; // evidence longer than this (e.g. `full` read the whole document) is not shaded

// Where in an evidence span the answer was read: the sentence that holds most of the answer's own words (those the
// question does not have; longer words count more; the whole answer verbatim counts most), with the question's
// words breaking ties. Returns [start, end] in document offsets, or null when no sentence holds an answer word.
function words(text) {
  return (text.toLowerCase().match(/[\p{L}\p{N}]+/gu) || []).filter((w) => !STOP.has(w));
}

function locateAnswer(text, ev, answer, question) {
  const asked = new Set(words(question || ""));
  const own = [...new Set(words(answer || ""))].filter((w) => w.length > 2 && !asked.has(w));
  if (!own.length) return null;
  const needle = (answer || "").trim().replace(/[.!?]+$/, "").toLowerCase();
  const hay = text.slice(ev.start, ev.end);
  let best = null;
  let bestScore = 0;
  for (const match of hay.matchAll(/[^.!?\n]+[.!?]?/g)) {
    const sentence = match[0];
    if (sentence.trim().length < 2) continue;
    const present = new Set(words(sentence));
    let score = 0;
    for (const w of own) if (present.has(w)) score += w.length;
    if (!score) continue;
    if (needle.length >= 3 && sentence.toLowerCase().includes(needle)) score += 100;
    for (const w of asked) if (present.has(w)) score += 0.1;
    if (score > bestScore) {
      bestScore = score;
      const lead = sentence.length - sentence.trimStart().length;
      best = [ev.start + match.index + lead, ev.start + match.index + sentence.trimEnd().length];
    }
  }
  return best;
}

function pageOf(offset) {
  if (!shownDocument) return null;
  let page = null;
  for (const [number, start] of shownDocument.data.page_spans) {
    if (start <= offset) page = number;
    else break;
  }
  return page;
}

function renderAnswers(job) {
  const list = $("answers");
  list.replaceChildren();
  for (const node of document.querySelectorAll(".job-summary")) node.remove();
  const result = job.result;
  $("answers-empty").hidden = Boolean(result);
  if (!result) {
    $("answers-empty").textContent =
      job.status === "cancelled" ? "The job was cancelled." : "Answers appear here when the job ends.";
    $("answers-empty").hidden = false;
    renderDocument([]);
    return;
  }
  const text = shownDocument ? shownDocument.data.text : "";
  const spans = [];
  const attempts = result.attempts || [];
  const path = attempts.length > 1 ? ` (tried ${attempts.map((a) => a.strategy).join(" → ")})` : "";
  list.before(el("p", { class: "job-summary" }, `Answered by ${result.strategy}${path} · ${costLine(result.cost)}`));
  result.answers.forEach((answer, a) => {
    const evidence = answer.evidence || [];
    const items = evidence.map((ev, e) => {
      const key = `a${a}e${e}`;
      const whole = ev.end - ev.start > SHADE_LIMIT || ev.end - ev.start >= 0.9 * text.length;
      if (!whole) spans.push({ start: ev.start, end: ev.end, key, answer: a, kind: "ev" });
      const found = text ? locateAnswer(text, ev, answer.text, answer.question) : null;
      if (found) spans.push({ start: found[0], end: found[1], key, answer: a, kind: "found" });
      const page = found ? pageOf(found[0]) : ev.page;
      const where = [];
      if (page) where.push(`page ${page}`);
      const section = found && shownDocument ? sectionOf(found[0]) : ev.section;
      if (section) where.push(section);
      let quote = found ? text.slice(found[0], found[1]) : ev.text || text.slice(ev.start, ev.end);
      if (quote.length > 180) quote = `${quote.slice(0, 180)}…`;
      const label = whole && !found ? "the whole document was read" : `“${quote}”`;
      return el(
        "li",
        {},
        el(
          "button",
          { type: "button", class: "evidence", "data-key": key, "data-page": page, onclick: () => jumpTo(key) },
          where.length ? el("strong", { class: "where" }, where.join(" · ")) : null,
          where.length ? " " : "",
          el("span", { class: "snippet" }, label),
          whole
            ? el(
                "span",
                { class: "hint" },
                ev.end - ev.start >= 0.9 * text.length
                  ? " (it read the whole document)"
                  : ` (it read ${fmt.format(ev.end - ev.start)} characters here)`,
              )
            : "",
        ),
      );
    });
    const supported = answer.supported
      ? el("span", { class: "badge ok" }, "Supported by its evidence")
      : el("span", { class: "badge warn" }, "Not supported by its evidence: it may be made up");
    list.append(
      el(
        "li",
        { class: "answer", id: `answer-${a}` },
        el("h3", { class: "question" }, answer.question || answer.kind),
        el("p", { class: "answer-text" }, answer.text || "(no answer)"),
        el("p", {}, supported),
        el("p", { class: "cost hint" }, costLine(answer.cost)),
        items.length
          ? el("div", {}, el("h4", {}, `Evidence (${items.length})`), el("ul", { class: "evidence-list" }, items))
          : el("p", { class: "hint" }, "No evidence passages."),
      ),
    );
  });
  renderDocument(spans);
}

function sectionOf(offset) {
  let title = null;
  for (const heading of shownDocument.data.outline) if (heading.start <= offset) title = heading.title;
  return title;
}

// ---- the document view -----------------------------------------------------------------------------------

async function loadDocument(documentId) {
  if (shownDocument && shownDocument.id === documentId) return shownDocument.data;
  const data = await api(`/v1/documents/${encodeURIComponent(documentId)}/text`);
  shownDocument = { id: documentId, data };
  return data;
}

function renderDocument(spans) {
  const view = $("doc-view");
  if (!shownDocument) {
    view.replaceChildren();
    return;
  }
  const doc = shownDocument.data;
  const text = doc.text;
  const meta = [`${doc.filename} · ${fmt.format(text.length)} characters`];
  if (doc.pages) meta.push(`${doc.pages} pages`);
  if (doc.image_only_pages.length) {
    meta.push(`image-only, not read: page${doc.image_only_pages.length > 1 ? "s" : ""} ${doc.image_only_pages.join(", ")}`);
  }
  $("doc-meta").textContent = meta.join(" · ");

  // Markers at offsets: page starts, outline headings; then text pieces wrapped in <mark> where evidence covers them.
  const markers = new Map();
  const addMarker = (at, node) => {
    if (!markers.has(at)) markers.set(at, []);
    markers.get(at).push(node);
  };
  const imageOnly = new Set(doc.image_only_pages);
  let previousPage = 0;
  for (const [page, start] of doc.page_spans) {
    for (let p = previousPage + 1; p < page; p++) {
      if (imageOnly.has(p)) addMarker(start, el("div", { class: "page-mark image" }, `Page ${p}: image only (no text layer, not read)`));
    }
    addMarker(start, el("div", { class: "page-mark", id: `page-${page}` }, `Page ${page}`));
    previousPage = page;
  }
  doc.outline.forEach((heading, h) => addMarker(heading.start, el("span", { class: "anchor", id: `heading-${h}` })));
  const cuts = new Set([0, text.length, ...markers.keys()]);
  for (const s of spans) {
    cuts.add(Math.max(0, Math.min(text.length, s.start)));
    cuts.add(Math.max(0, Math.min(text.length, s.end)));
  }
  const points = [...cuts].sort((x, y) => x - y);
  const fragment = document.createDocumentFragment();
  for (let i = 0; i < points.length; i++) {
    const at = points[i];
    for (const node of markers.get(at) || []) fragment.append(node);
    const end = points[i + 1];
    if (end === undefined || end <= at) continue;
    const piece = text.slice(at, end);
    const covering = spans.filter((s) => s.start <= at && at < s.end);
    if (!covering.length) fragment.append(piece);
    else {
      const found = covering.some((s) => s.kind === "found");
      const mark = el("mark", {
        class: `ev ans-${covering[0].answer % 6}${found ? " found" : ""}`,
        "data-keys": covering.map((s) => s.key).join(" "),
        title: covering.map((s) => `answer ${s.answer + 1}`).join(", "),
      }, piece);
      fragment.append(mark);
    }
  }
  view.replaceChildren(fragment);
  renderOutline(doc);
}

function renderOutline(doc) {
  const nav = $("outline");
  nav.hidden = !doc.outline.length;
  if (!doc.outline.length) return;
  const items = doc.outline.map((heading, h) =>
    el(
      "li",
      { style: `margin-left:${Math.min(heading.level, 4)}em` },
      el(
        "button",
        { type: "button", class: "link", onclick: () => scrollToNode($(`heading-${h}`)) },
        heading.title,
        heading.page ? el("span", { class: "hint" }, ` p. ${heading.page}`) : "",
      ),
    ),
  );
  nav.replaceChildren(el("details", {}, el("summary", {}, `Outline (${doc.outline.length})`), el("ul", {}, items)));
}

function scrollToNode(node) {
  if (!node) return;
  node.scrollIntoView({ block: "center" });
}

function jumpTo(key) {
  for (const node of document.querySelectorAll("mark.active")) node.classList.remove("active");
  for (const node of document.querySelectorAll("button.evidence.active")) node.classList.remove("active");
  let marks = [...document.querySelectorAll("mark.ev")].filter((m) => m.dataset.keys.split(" ").includes(key));
  const found = marks.filter((m) => m.classList.contains("found"));
  if (found.length) marks = found;
  for (const m of marks) m.classList.add("active");
  const button = document.querySelector(`button.evidence[data-key="${key}"]`);
  if (button) button.classList.add("active");
  if (marks.length) {
    marks[0].setAttribute("tabindex", "-1");
    marks[0].scrollIntoView({ block: "center" });
    marks[0].focus({ preventScroll: true });
  } else if (button) {
    // Nothing to highlight (it read everything and the answer's words are not in it): go to its page, or the top.
    const target = button.dataset.page ? $(`page-${button.dataset.page}`) : null;
    if (target) scrollToNode(target);
    else $("doc-view").scrollTop = 0;
  }
}

// ---- opening jobs ------------------------------------------------------------------------------------------

async function openJob(job) {
  clearError();
  shownJob = job;
  $("job-line").textContent = `Job ${job.id} · ${job.requested_strategy} · created ${new Date(job.created_at).toLocaleString()}`;
  renderProgress(job);
  $("answers").replaceChildren();
  for (const node of document.querySelectorAll(".job-summary")) node.remove();
  try {
    await loadDocument(job.document_id);
  } catch (err) {
    showError(err);
  }
  if (TERMINAL.has(job.status)) {
    stopFollowing();
    jobEnded(job);
  } else {
    $("answers-empty").hidden = false;
    $("answers-empty").textContent = "Reading… answers appear here when the job ends.";
    renderDocument([]);
    follow(job.id);
  }
}

async function refreshJobs() {
  if (!$("api-key").value.trim()) return;
  try {
    const page = await api("/v1/jobs?limit=20");
    const list = $("jobs");
    list.replaceChildren(
      ...page.jobs.map((job) => {
        const first = (job.task.questions && job.task.questions[0]) || job.task.kind;
        const more = job.task.questions && job.task.questions.length > 1 ? ` (+${job.task.questions.length - 1})` : "";
        return el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: `job ${job.status}`,
              "data-job": job.id,
              "aria-current": shownJob && shownJob.id === job.id ? "true" : null,
              onclick: () => api(`/v1/jobs/${job.id}`).then(openJob).catch(showError),
            },
            el("span", { class: `status ${job.status}` }, job.status),
            ` ${first}${more}`,
            el("span", { class: "hint" }, ` · ${job.strategy || job.requested_strategy} · ${new Date(job.created_at).toLocaleTimeString()}`),
          ),
        );
      }),
    );
    if (!page.jobs.length) list.append(el("li", { class: "hint" }, "No jobs yet for this key."));
  } catch (err) {
    showError(err);
  }
}

async function cancel() {
  if (!shownJob) return;
  clearError();
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(shownJob.id)}`, { method: "DELETE" });
    stopFollowing();
    jobEnded(job);
  } catch (err) {
    showError(err);
  }
}

// ---- start ---------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  loadKey();
  setupDrop();
  $("ask").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("refresh-jobs").addEventListener("click", () => {
    clearError();
    saveKey();
    refreshJobs();
  });
  $("api-key").addEventListener("change", () => {
    clearError();
    saveKey();
    refreshJobs();
  });
  $("remember-key").addEventListener("change", saveKey);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey();
    refreshJobs();
  });
  $("show-key").addEventListener("click", () => {
    const input = $("api-key");
    const show = input.type === "password";
    input.type = show ? "text" : "password";
    $("show-key").textContent = show ? "Hide" : "Show";
    $("show-key").setAttribute("aria-pressed", String(show));
  });
  refreshJobs();
});

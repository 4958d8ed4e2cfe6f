// fracsight worklist and viewer. Plain JavaScript, no build step: the service serves this file as is.
// Every API call carries the bearer token the reader signed in with (kept for this tab only); the
// service says whose token it is (/api/me), and records verdicts under that name.
"use strict";

const state = {
  token: null, reader: null, study: null, viewports: [], active: 0, generation: 0,
  // the worklist page shown: sort, paging, and the change cursor it is current to
  list: { sort: "priority", order: "asc", offset: 0, total: 0, cursor: 0, seq: 0, keys: [], selected: -1 },
  heatScale: null, // the heat-map layer's fixed colour scale (GET /api/categories)
};
const PAGE = 100; // studies per worklist page
const POLL_MS = 2000; // how often the open worklist asks what changed
// What each answer means, its word and colour: fetched from /api/categories (fracsight.decide).
const MEANING = {};
const WORD = {};
const $ = (sel) => document.querySelector(sel);

// ---- API ---------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("The token was not accepted.");
    throw new Error("unauthorised");
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

// ---- sign in -----------------------------------------------------------------------------------

function show(view) {
  for (const id of ["sign-in", "list-view", "viewer-view"]) $("#" + id).hidden = id !== view;
  $("#sign-out").hidden = view === "sign-in";
}

function signOut(message) {
  sessionStorage.removeItem("fracsight");
  state.token = null;
  $("#sign-in-error").textContent = message || "";
  $("#who").textContent = "";
  show("sign-in");
}

$("#sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = (state.token = $("#token").value.trim());
  try {
    const me = await apiJson("/api/me");
    if (state.token !== token) return; // signed out meanwhile: store nothing
    state.reader = me.name;
    state.role = me.role;
  } catch (error) {
    $("#sign-in-error").textContent = "Sign-in failed: " + error.message;
    return;
  }
  sessionStorage.setItem("fracsight", JSON.stringify({ token: state.token, reader: state.reader, role: state.role }));
  start();
});
$("#sign-out").addEventListener("click", () => signOut(""));

async function loadCategories() {
  const { categories, heatmap_scale: scale } = await apiJson("/api/categories");
  state.heatScale = scale || null;
  renderLegend();
  const css = { fracture: "--fracture", doubt: "--doubt", no_fracture: "--none", out_of_scope: "--scope" };
  for (const c of categories) {
    MEANING[c.category] = `${c.word}: ${c.meaning}`;
    WORD[c.category] = c.word;
    if (css[c.category]) document.documentElement.style.setProperty(css[c.category], c.colour);
  }
}

async function start() {
  try {
    await loadCategories();
  } catch (error) {
    // the page still works with the category values as words
  }
  $("#who").textContent = `Signed in as ${state.reader}` + (state.role === "admin" ? " (administrator)" : "");
  route();
}

// ---- routing: #/ is the worklist, #/study/<key> a study ----------------------------------------

window.addEventListener("hashchange", () => state.token && route());

function route() {
  const match = location.hash.match(/^#\/study\/(.+)$/);
  if (match) openStudy(decodeURIComponent(match[1]));
  else showWorklist();
}

// ---- worklist ----------------------------------------------------------------------------------

function badge(category, status) {
  const span = document.createElement("span");
  const kind = category || status;
  span.className = "badge " + kind;
  span.textContent = WORD[kind] || (kind || "").replace("_", " ");
  return span;
}

async function showWorklist() {
  show("list-view");
  await loadWorklist();
  startPolling();
}

function listParams() {
  const params = new URLSearchParams();
  const filters = [["category", "#filter-category"], ["read", "#filter-read"], ["q", "#filter-search"],
    ["date_from", "#filter-from"], ["date_to", "#filter-to"]];
  for (const [name, id] of filters) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  params.set("sort", state.list.sort);
  params.set("order", state.list.order);
  params.set("limit", PAGE);
  params.set("offset", state.list.offset);
  return params;
}

// One page of the worklist, filtered, sorted and paged by the service.
async function loadWorklist() {
  const seq = ++state.list.seq;
  const page = await apiJson("/api/worklist?" + listParams());
  if (seq !== state.list.seq) return; // a later request is on its way: it draws the list
  if (!page.studies.length && page.total && state.list.offset) {
    state.list.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE); // past the end now
    return loadWorklist();
  }
  state.list.cursor = page.cursor;
  state.list.total = page.total;
  renderWorklist(page.studies);
}

function renderWorklist(studies) {
  const body = $("#worklist tbody");
  body.replaceChildren();
  const previous = state.list.keys[state.list.selected];
  state.list.keys = studies.map((s) => s.study);
  state.list.selected = previous === undefined ? -1 : state.list.keys.indexOf(previous);
  for (const s of studies) {
    const row = document.createElement("tr");
    row.dataset.study = s.study;
    row.dataset.category = s.category || "";
    if (s.read) row.classList.add("read");
    const status = s.category ? null : s.n_pending ? "pending" : "refused";
    const upload = s.study.startsWith("upload-"); // no DICOM header: named by its file, dated by its upload
    const cells = [
      badge(s.category, status),
      s.probability == null ? "" : s.probability.toFixed(2),
      s.patient_name || (upload ? "(upload, no header)" : "(no name)"),
      s.patient_id,
      s.study_description || s.modality || "",
      formatDate(s.study_date) || (upload ? "uploaded " + new Date(s.received_at).toLocaleDateString() : ""),
      (s.regions || []).join(", "),
      `${s.n_images}` + (s.n_pending ? ` (${s.n_pending} pending)` : "") + (s.n_refused ? ` (${s.n_refused} refused)` : "") +
        (s.n_undelivered ? ` (${s.n_undelivered} results not yet delivered to the PACS)` : ""),
      new Date(s.received_at).toLocaleString(),
    ];
    for (const value of cells) {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value);
      else td.textContent = value;
      row.append(td);
    }
    const readCell = document.createElement("td");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = s.read;
    box.title = s.read ? `read by ${s.read_by}` : "mark read";
    box.addEventListener("click", async (event) => {
      event.stopPropagation();
      await markRead(s.study, box.checked);
      loadWorklist();
    });
    readCell.append(box);
    row.append(readCell);
    row.addEventListener("click", () => (location.hash = "#/study/" + encodeURIComponent(s.study)));
    body.append(row);
  }
  selectRow(state.list.selected);
  const { offset, total } = state.list;
  $("#page-info").textContent = total ? `${offset + 1}–${offset + studies.length} of ${total}` : "no studies";
  $("#page-prev").disabled = offset === 0;
  $("#page-next").disabled = offset + studies.length >= total;
  for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
    th.dataset.sorted = th.dataset.sort === state.list.sort ? state.list.order : "";
  }
}

// While the worklist is open, ask every POLL_MS what changed since the page was drawn (new
// studies, results, read marks); only when something did is the page drawn again.
function startPolling() {
  clearTimeout(state.poll);
  state.poll = setTimeout(pollChanges, POLL_MS);
}

async function pollChanges() {
  if ($("#list-view").hidden || !state.token) return; // showWorklist starts it again
  try {
    const changes = await apiJson(`/api/changes?since=${state.list.cursor}&limit=200`);
    if (changes.studies.length || changes.reset) await loadWorklist();
    else state.list.cursor = changes.cursor;
  } catch (error) {
    // the service restarting or the network gone for a moment: asked again at the next tick
  } finally {
    if (!$("#list-view").hidden && state.token) startPolling();
  }
}

// Worklist keyboard: up/down arrows choose a study, Enter opens it.
function selectRow(index) {
  const rows = document.querySelectorAll("#worklist tbody tr");
  state.list.selected = rows.length ? Math.max(0, Math.min(index, rows.length - 1)) : -1;
  if (index < 0) state.list.selected = -1;
  rows.forEach((row, i) => row.classList.toggle("selected", i === state.list.selected));
  const chosen = rows[state.list.selected];
  if (chosen) chosen.scrollIntoView({ block: "nearest" });
}

function worklistKey(event) {
  if (event.key === "ArrowDown") selectRow(state.list.selected + 1);
  else if (event.key === "ArrowUp") selectRow(Math.max(0, state.list.selected - 1));
  else if (event.key === "Enter" && state.list.selected >= 0) openKey(state.list.keys[state.list.selected]);
  else return;
  event.preventDefault();
}

function openKey(key) {
  location.hash = "#/study/" + encodeURIComponent(key);
}

function formatDate(text) {
  return text && text.length === 8 ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text || "";
}

async function markRead(study, read) {
  await apiJson(`/api/studies/${encodeURIComponent(study)}/read`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ read }),
  });
}

function filtersChanged() {
  state.list.offset = 0;
  loadWorklist();
}
for (const id of ["#filter-category", "#filter-read", "#filter-from", "#filter-to", "#filter-search"]) {
  $(id).addEventListener("change", filtersChanged);
}
$("#filter-search").addEventListener("keydown", (event) => event.key === "Enter" && filtersChanged());
$("#refresh").addEventListener("click", loadWorklist);
$("#page-prev").addEventListener("click", () => {
  state.list.offset = Math.max(0, state.list.offset - PAGE);
  loadWorklist();
});
$("#page-next").addEventListener("click", () => {
  state.list.offset += PAGE;
  loadWorklist();
});
for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
  th.addEventListener("click", () => {
    const same = state.list.sort === th.dataset.sort;
    state.list.order = same && state.list.order === "asc" ? "desc" : "asc";
    state.list.sort = th.dataset.sort;
    state.list.offset = 0;
    loadWorklist();
  });
}

$("#upload").addEventListener("change", async (event) => {
  const files = Array.from(event.target.files);
  let done = 0;
  const failures = [];
  const duplicates = [];
  for (const file of files) {
    const form = new FormData();
    form.append("file", file);
    const response = await api("/api/images", { method: "POST", body: form });
    if (response.status === 202) done += 1;
    else if (response.status === 200) duplicates.push(file.name); // the same DICOM instance is kept already
    else failures.push(`${file.name}: ${(await response.json()).detail}`);
  }
  $("#upload-status").textContent = `${done} of ${files.length} uploaded` +
    (duplicates.length ? `; already kept, not added again: ${duplicates.join(", ")}` : "") +
    (failures.length ? "; " + failures.join("; ") : "");
  event.target.value = "";
  loadWorklist();
});

// ---- viewer ------------------------------------------------------------------------------------

async function openStudy(key) {
  show("viewer-view");
  const generation = ++state.generation; // a study opened later makes this one's answers stale
  clearStudy();
  let study;
  try {
    study = await apiJson(`/api/studies/${encodeURIComponent(key)}`);
  } catch (error) {
    if (generation !== state.generation) return;
    $("#study-error").textContent = error.message === "no such study"
      ? "This study was not found: the link may be wrong, or the study is no longer kept."
      : "The study could not be opened: " + error.message;
    $("#study-error").hidden = false;
    return;
  }
  if (generation !== state.generation) return;
  state.study = study;
  const uploaded = study.study.startsWith("upload-") ? "uploaded " + new Date(study.received_at).toLocaleString() : "";
  $("#study-title").textContent = [study.patient_name, study.patient_id, study.study_description,
    formatDate(study.study_date) || uploaded, (study.regions || []).join(", ")].filter(Boolean).join(" · ") || "Uploaded image";
  $("#mark-read").textContent = study.read ? "Mark study unread" : "Mark study read";
  $("#mark-read").disabled = false;
  const container = $("#viewports");
  // the views with a finding first (fracture, doubt, then the rest), the most suspicious first
  const rank = { fracture: 0, doubt: 1, no_fracture: 2, out_of_scope: 3 };
  const order = (image) => (image.category in rank ? rank[image.category] : 4);
  const images = [...study.images].sort((a, b) => order(a) - order(b) || (b.probability || 0) - (a.probability || 0));
  // the reader's chosen layout, else as many views as the study has, up to two
  state.layout = state.chosenLayout || Math.max(1, Math.min(images.length, 2));
  for (const image of images) {
    const vp = new Viewport(image, generation);
    container.append(vp.element);
    state.viewports.push(vp);
    vp.load();
  }
  setActive(0);
}

// Nothing of the study shown before stays on screen while another loads, or when it fails to.
function clearStudy() {
  state.study = null;
  state.viewports = [];
  $("#viewports").replaceChildren();
  $("#study-title").textContent = "";
  $("#study-error").hidden = true;
  $("#study-error").textContent = "";
  $("#study-note").textContent = "";
  $("#mark-read").disabled = true;
}

$("#back").addEventListener("click", () => (location.hash = "#/"));
$("#mark-read").addEventListener("click", async () => {
  if (!state.study) return;
  const reading = !state.study.read;
  await markRead(state.study.study, reading);
  if (reading) nextUnread(true);
  else location.hash = "#/";
});
$("#prev-study").addEventListener("click", () => stepStudy(-1));
$("#next-study").addEventListener("click", () => stepStudy(1));

// The worklist's order (its filters and sort) is the reading order; a study opened by its link
// finds its place in the first page.
async function worklistKeys() {
  if (!state.list.keys.length) {
    const page = await apiJson("/api/worklist?" + listParams());
    state.list.keys = page.studies.map((s) => s.study);
  }
  return state.list.keys;
}

async function stepStudy(step) {
  if (!state.study) return;
  const keys = await worklistKeys();
  const here = keys.indexOf(state.study.study);
  const next = keys[here < 0 ? (step > 0 ? 0 : keys.length - 1) : here + step];
  if (next !== undefined) {
    state.list.selected = keys.indexOf(next);
    openKey(next);
  } else {
    $("#study-note").textContent = step > 0 ? "This is the last study of the worklist page." : "This is the first study.";
  }
}

// Mark the open study read (if asked) and open the worklist's next unread study, in its order.
async function nextUnread(alreadyMarked = false) {
  if (!state.study) return;
  const current = state.study.study;
  if (!alreadyMarked && !state.study.read) await markRead(current, true);
  const params = listParams();
  params.set("read", "false");
  params.set("offset", 0);
  const page = await apiJson("/api/worklist?" + params);
  state.list.keys = [];  // the list changed: it is asked again when needed
  const next = page.studies.map((s) => s.study).find((key) => key !== current);
  if (next) openKey(next);
  else location.hash = "#/";
}

function setActive(index) {
  state.active = Math.max(0, Math.min(index, state.viewports.length - 1));
  state.viewports.forEach((vp, i) => vp.element.classList.toggle("active", i === state.active));
  showLayout();
}

// Hanging: 1, 2, 3 or 4 views side by side, the ones with a finding first; the page of views
// shown is the one holding the active view.
function setLayout(n) {
  if (n !== 1) state.lastLayout = n;
  state.layout = state.chosenLayout = n;
  showLayout();
  state.viewports.forEach((vp) => !vp.element.hidden && vp.fit());
}

function showLayout() {
  const n = state.layout || 1;
  const first = Math.floor(state.active / n) * n;
  $("#viewports").style.gridTemplateColumns = `repeat(${Math.min(n, Math.max(1, state.viewports.length))}, minmax(0, 1fr))`;
  $("#viewports").dataset.layout = n;
  let changed = false;
  state.viewports.forEach((vp, i) => {
    const hidden = i < first || i >= first + n;
    if (vp.element.hidden !== hidden) changed = true;
    vp.element.hidden = hidden;
  });
  if (changed) state.viewports.forEach((vp) => !vp.element.hidden && vp.fit());
  document.querySelectorAll("#layout button").forEach((b) => b.classList.toggle("on", Number(b.dataset.layout) === n));
}

function setMeasuring(on) {
  state.measuring = on;
  $("#measure").classList.toggle("on", on);
  $("#viewports").classList.toggle("measuring", on);
}

function toggleFullScreen() {
  const on = !document.body.classList.contains("fullscreen");
  document.body.classList.toggle("fullscreen", on);
  try {
    if (on && document.documentElement.requestFullscreen) document.documentElement.requestFullscreen().catch(() => {});
    else if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
  } catch (error) {
    // the page fills the window even where the browser refuses full screen
  }
  state.viewports.forEach((vp) => !vp.element.hidden && vp.fit());
}

$("#measure").addEventListener("click", () => setMeasuring(!state.measuring));
$("#flip").addEventListener("click", () => activeViewport() && activeViewport().orient(true, false));
$("#rotate").addEventListener("click", () => activeViewport() && activeViewport().orient(false, true));
$("#preset").addEventListener("click", () => activeViewport() && activeViewport().cyclePreset());
$("#full").addEventListener("click", toggleFullScreen);
document.querySelectorAll("#layout button").forEach((b) => b.addEventListener("click", () => setLayout(Number(b.dataset.layout))));

function activeViewport() {
  return state.viewports[state.active];
}

$("#heat-toggle").addEventListener("change", () => state.viewports.forEach((vp) => vp.draw()));
$("#opacity").addEventListener("input", () => state.viewports.forEach((vp) => vp.draw()));
$("#reset").addEventListener("click", () => activeViewport() && activeViewport().reset());
$("#invert").addEventListener("click", () => activeViewport() && activeViewport().toggleInvert());

document.addEventListener("keydown", (event) => {
  if (!state.token || event.target.matches("input[type=text], input[type=search], input[type=password], textarea")) return;
  if (event.key === "?") {
    $("#help").hidden = !$("#help").hidden;
    return;
  }
  if (event.key === "Escape" && !$("#help").hidden) {
    $("#help").hidden = true;
    return;
  }
  if (!$("#list-view").hidden && !event.target.matches("select, button")) return worklistKey(event);
  if ($("#viewer-view").hidden) return;
  const vp = activeViewport();
  if (event.key === "n" || event.key === "N" || event.key === "PageDown") stepStudy(1);
  else if (event.key === "p" || event.key === "P" || event.key === "PageUp") stepStudy(-1);
  else if (event.key === "u" || event.key === "U") nextUnread();
  else if (event.key === "h" || event.key === "H") {
    $("#heat-toggle").checked = !$("#heat-toggle").checked;
    state.viewports.forEach((v) => v.draw());
  } else if ((event.key === "r" || event.key === "R") && vp) vp.reset();
  else if ((event.key === "i" || event.key === "I") && vp) vp.toggleInvert();
  else if ((event.key === "w" || event.key === "W") && vp) vp.cyclePreset();
  else if ((event.key === "x" || event.key === "X") && vp) vp.orient(true, false);
  else if ((event.key === "t" || event.key === "T") && vp) vp.orient(false, true);
  else if (event.key === "m" || event.key === "M") setMeasuring(!state.measuring);
  else if (["1", "2", "3", "4"].includes(event.key)) setLayout(Number(event.key));
  else if (event.key === "s" || event.key === "S") setLayout(state.layout === 1 ? state.lastLayout || 2 : 1);
  else if (event.key === "f" || event.key === "F") toggleFullScreen();
  else if (event.key === "ArrowRight") setActive(state.active + 1);
  else if (event.key === "ArrowLeft") setActive(state.active - 1);
  else if (event.key === "Escape" && document.body.classList.contains("fullscreen")) toggleFullScreen();
  else if (event.key === "Escape") location.hash = "#/";
});

class Viewport {
  constructor(image, generation) {
    this.image = image;
    this.generation = generation;
    this.element = document.createElement("div");
    this.element.className = "viewport";
    this.element.dataset.image = image.id;
    this.canvas = document.createElement("canvas");
    this.canvas.dataset.image = image.id;
    this.info = document.createElement("div");
    this.info.className = "info";
    this.element.append(this.canvas, this.info);
    this.invert = false;
    this.bindMouse();
    this.renderInfo();
  }

  async load() {
    if (this.image.status === "queued" || this.image.status === "analysing") {
      this.info.querySelector(".status").textContent = "analysing…";
      setTimeout(async () => {
        if (this.generation !== state.generation) return; // another study is open now
        this.image = await apiJson(`/api/images/${this.image.id}`);
        this.renderInfo();
        this.load();
      }, 1500);
      return;
    }
    const response = await api(`/api/images/${this.image.id}/pixels`);
    if (!response.ok) return; // refused before decoding: nothing to show but the reason
    const buffer = await response.arrayBuffer();
    const [height, width] = new Uint32Array(buffer.slice(0, 8));
    this.pixels = new Uint16Array(buffer, 8, height * width);
    this.width = width;
    this.height = height;
    this.source = document.createElement("canvas");
    this.source.width = width;
    this.source.height = height;
    if (this.image.status === "done" && this.image.category !== "out_of_scope") {  // not scored: no map
      const overlay = await api(`/api/images/${this.image.id}/overlay.png`);
      if (overlay.ok) {
        this.overlay = await createImageBitmap(await overlay.blob());
      }
    }
    this.reset();
  }

  // The DICOM header's window presets (on the display scale, from the service), then the window
  // the model sees; the first is applied on open, W cycles through them.
  presets() {
    const header = (this.image.display && this.image.display.presets) || [];
    return [...header.map((p) => ({ name: p.name, level: p.display_level, width: p.display_width })),
      { name: "auto (image percentiles)" }];
  }

  applyPreset(index) {
    const presets = this.presets();
    this.presetIndex = ((index % presets.length) + presets.length) % presets.length;
    const preset = presets[this.presetIndex];
    if (preset.width) {
      this.windowWidth = preset.width;
      this.windowLevel = preset.level;
    } else {
      this.defaultWindow();
    }
    this.canvas.dataset.preset = preset.name;
  }

  cyclePreset() {
    if (!this.pixels) return;
    this.applyPreset(this.presetIndex + 1);
    this.render();
    this.draw();
  }

  defaultWindow() {
    // The window the model sees: the 0.5th to 99.5th percentile of the image's values.
    const step = Math.max(1, Math.floor(this.pixels.length / 65536));
    const sample = [];
    for (let i = 0; i < this.pixels.length; i += step) sample.push(this.pixels[i]);
    sample.sort((a, b) => a - b);
    const lo = sample[Math.floor(sample.length * 0.005)];
    const hi = sample[Math.min(sample.length - 1, Math.floor(sample.length * 0.995))];
    this.windowWidth = Math.max(1, hi - lo);
    this.windowLevel = (hi + lo) / 2;
  }

  render() {
    // Window/level through a 65,536-entry table: one lookup per pixel.
    const lut = new Uint8ClampedArray(65536);
    const low = this.windowLevel - this.windowWidth / 2;
    for (let v = 0; v < 65536; v++) {
      const g = ((v - low) / this.windowWidth) * 255;
      lut[v] = this.invert ? 255 - g : g;
    }
    const ctx = this.source.getContext("2d");
    const data = ctx.createImageData(this.width, this.height);
    const out = data.data;
    for (let i = 0, j = 0; i < this.pixels.length; i++, j += 4) {
      const g = lut[this.pixels[i]];
      out[j] = out[j + 1] = out[j + 2] = g;
      out[j + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    this.canvas.dataset.window = Math.round(this.windowWidth);
    this.canvas.dataset.level = Math.round(this.windowLevel);
    this.canvas.dataset.invert = this.invert;
  }

  reset() {
    if (!this.pixels) return;
    this.applyPreset(0);
    this.invert = false;
    this.flip = false;
    this.turns = 0; // quarter turns clockwise
    this.measure = null;
    this.render();
    this.fit();
  }

  // The whole image in the canvas, centred (after a layout change too).
  fit() {
    if (!this.pixels) return;
    const rect = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(rect.width));
    this.canvas.height = Math.max(1, Math.round(rect.height));
    const [w, h] = this.turns % 2 ? [this.height, this.width] : [this.width, this.height];
    this.zoom = Math.min(this.canvas.width / w, this.canvas.height / h);
    this.cx = this.canvas.width / 2;
    this.cy = this.canvas.height / 2;
    this.draw();
  }

  // Display pixels -> canvas: centre at (cx, cy), zoom, quarter turns, then the horizontal flip.
  matrix() {
    return new DOMMatrix().translate(this.cx, this.cy).scale(this.zoom).rotate(90 * this.turns)
      .scale(this.flip ? -1 : 1, 1).translate(-this.width / 2, -this.height / 2);
  }

  toImage(e) {
    const rect = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - rect.left) * this.canvas.width) / rect.width;
    const y = ((e.clientY - rect.top) * this.canvas.height) / rect.height;
    const p = this.matrix().inverse().transformPoint(new DOMPoint(x, y));
    return { x: p.x, y: p.y, cx: x, cy: y };
  }

  orient(flip, turn) {
    if (!this.pixels) return;
    if (flip) this.flip = !this.flip;
    if (turn) this.turns = (this.turns + 1) % 4;
    this.fit();
  }

  // A measured length: mm where the header gives the pixel spacing, else pixels, labelled so.
  length(m) {
    const display = this.image.display || {};
    const fx = display.columns ? display.columns / this.width : 1;
    const fy = display.rows ? display.rows / this.height : 1;
    const dx = (m.x1 - m.x0) * fx;
    const dy = (m.y1 - m.y0) * fy;
    const spacing = display.pixel_spacing_mm;
    if (!spacing) {
      const size = this.image.size;
      const f = size ? size.width / this.width : 1;
      return { value: null, text: `${(Math.hypot(m.x1 - m.x0, m.y1 - m.y0) * f).toFixed(0)} px (uncalibrated: no pixel spacing)` };
    }
    const mm = Math.hypot(dx * spacing[1], dy * spacing[0]); // [row spacing, column spacing]
    const where = display.spacing_source === "ImagerPixelSpacing" ? " (at the detector)" : "";
    return { value: mm, text: `${mm.toFixed(1)} mm${where}` };
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.render();
    this.draw();
  }

  draw() {
    if (!this.source) return;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const m = this.matrix();
    ctx.setTransform(m);
    ctx.imageSmoothingEnabled = this.zoom < 1;
    ctx.drawImage(this.source, 0, 0);
    const heatOn = $("#heat-toggle").checked && this.overlay;
    this.canvas.dataset.heatmap = heatOn ? "on" : "off";
    if (heatOn) {
      ctx.imageSmoothingEnabled = true;
      ctx.globalAlpha = Number($("#opacity").value) / 100;
      ctx.drawImage(this.overlay, 0, 0, this.width, this.height);
      ctx.globalAlpha = 1;
      this.drawPeak(ctx);
    }
    this.drawShutters(ctx);
    this.drawOutline(ctx);
    this.drawMeasure(ctx);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.drawText(ctx);
    // where the original image's pixels are on the canvas (tests and tools read these)
    this.canvas.dataset.scale = this.image.size ? this.width / this.image.size.width : 1;
    this.canvas.dataset.matrix = JSON.stringify([m.a, m.b, m.c, m.d, m.e, m.f]);
    this.canvas.dataset.zoom = this.zoom.toFixed(3);
    this.canvas.dataset.flip = this.flip;
    this.canvas.dataset.turns = this.turns;
  }

  // The DICOM shutters: outside them (collimated borders) is dark, heat map included.
  drawShutters(ctx) {
    const display = this.image.display || {};
    const shutters = display.shutters || [];
    this.canvas.dataset.shutters = shutters.length;
    if (!shutters.length || !display.columns) return;
    const fx = this.width / display.columns;
    const fy = this.height / display.rows;
    ctx.save();
    ctx.fillStyle = "#000";
    for (const s of shutters) { // outside each shape dark: shown is what all of them let through
      ctx.beginPath();
      ctx.rect(0, 0, this.width, this.height);
      if (s.shape === "rectangle") {
        ctx.moveTo(s.x0 * fx, s.y0 * fy);
        ctx.lineTo(s.x0 * fx, s.y1 * fy);
        ctx.lineTo(s.x1 * fx, s.y1 * fy);
        ctx.lineTo(s.x1 * fx, s.y0 * fy);
        ctx.closePath();
      } else if (s.shape === "circle") {
        ctx.moveTo((s.x + s.r) * fx, s.y * fy);
        ctx.ellipse(s.x * fx, s.y * fy, s.r * fx, s.r * fy, 0, 0, 2 * Math.PI, true);
        ctx.closePath();
      } else if (s.shape === "polygon") {
        s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * fx, y * fy) : ctx.moveTo(x * fx, y * fy)));
        ctx.closePath();
      }
      ctx.fill("evenodd");
    }
    ctx.restore();
  }

  drawMeasure(ctx) {
    if (!this.measure) return;
    const m = this.measure;
    ctx.save();
    ctx.strokeStyle = "#0f0";
    ctx.lineWidth = 1.5 / this.zoom;
    ctx.beginPath();
    ctx.moveTo(m.x0, m.y0);
    ctx.lineTo(m.x1, m.y1);
    ctx.stroke();
    ctx.restore();
    const length = this.length(m);
    this.canvas.dataset.measure = length.value == null ? "uncalibrated" : length.value.toFixed(2);
    this.canvas.dataset.measureText = length.text;
  }

  // What a PACS writes on the image: laterality, view, body part and date at the top; the window
  // (in the header's units where it gave one), zoom and orientation at the bottom; the measurement.
  drawText(ctx) {
    const d = this.image.display || {};
    const top = [d.laterality, d.view, d.body_part].filter(Boolean).join("  ");
    let wl;
    if (d.window) {
      const unit = (d.window.width - 1) / 65535;
      const level = d.window.inverted ? 65535 - this.windowLevel : this.windowLevel;
      wl = `W ${Math.round(this.windowWidth * unit + 1)}  L ${Math.round(d.window.center - 0.5 + (level - 32767.5) * unit)}`;
    } else {
      wl = `W ${(this.windowWidth / 655.35).toFixed(0)}%  L ${(this.windowLevel / 655.35).toFixed(0)}%`;
    }
    const bottom = `${wl}  Zoom ${this.zoom.toFixed(2)}×` + (this.flip ? "  flipped" : "") +
      (this.turns ? `  ${this.turns * 90}°` : "");
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillStyle = "#ff0";
    ctx.shadowColor = "#000";
    ctx.shadowBlur = 3;
    ctx.textBaseline = "top";
    ctx.fillText(top, 8, 6);
    const date = formatDate(d.date || "");
    ctx.fillText(date, this.canvas.width - 8 - ctx.measureText(date).width, 6);
    ctx.textBaseline = "bottom";
    ctx.fillText(bottom, 8, this.canvas.height - 6);
    if (this.measure) {
      const text = this.length(this.measure).text;
      ctx.fillText(text, this.canvas.width - 8 - ctx.measureText(text).width, this.canvas.height - 6);
    }
    ctx.shadowBlur = 0;
    this.canvas.dataset.overlay = [top, date, bottom].filter(Boolean).join(" | ");
  }

  // The hot region's outline, as the DICOM presentation state draws it: solid for "fracture",
  // dashed for "doubt", nothing for "no fracture" and "not scored".
  drawOutline(ctx) {
    const style = { fracture: "solid", doubt: "dashed" }[this.image.category];
    const points = this.image.outline;
    this.canvas.dataset.outline = style && points && points.length > 2 ? style : "none";
    if (this.canvas.dataset.outline === "none") return;
    const scale = this.image.size ? this.width / this.image.size.width : 1;
    ctx.save();
    ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue(
      this.image.category === "fracture" ? "--fracture" : "--doubt").trim() || "#f00";
    ctx.lineWidth = 2.5 / this.zoom;
    ctx.setLineDash(style === "dashed" ? [10 / this.zoom, 7 / this.zoom] : []);
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x * scale, y * scale) : ctx.moveTo(x * scale, y * scale)));
    ctx.closePath();
    ctx.stroke();
    ctx.restore();
  }

  drawPeak(ctx) {
    const peak = this.image.peak;
    // No crosshair where the model found nothing: a point there would read as a finding.
    const box = this.image.status === "done" && ["fracture", "doubt"].includes(this.image.category) && peak;
    if (!box) return;
    // The peak is in the original image's pixels; the displayed pixels may be reduced.
    const scale = this.image.size ? this.width / this.image.size.width : 1;
    const x = peak.x * scale;
    const y = peak.y * scale;
    const r = 14 / this.zoom;
    ctx.strokeStyle = "#4af";
    ctx.lineWidth = 2 / this.zoom;
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.moveTo(x - 2 * r, y);
    ctx.lineTo(x - r, y);
    ctx.moveTo(x + r, y);
    ctx.lineTo(x + 2 * r, y);
    ctx.stroke();
  }

  bindMouse() {
    let drag = null;
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("mousedown", (e) => {
      setActive(state.viewports.indexOf(this));
      const pan = e.button === 1 || e.button === 2 || e.shiftKey;
      e.preventDefault();
      if (!pan && state.measuring && this.pixels) {
        const p = this.toImage(e);
        this.measure = { x0: p.x, y0: p.y, x1: p.x, y1: p.y };
        drag = { measure: true };
        return;
      }
      drag = { pan, x: e.clientX, y: e.clientY, width: this.windowWidth, level: this.windowLevel, cx: this.cx, cy: this.cy };
    });
    window.addEventListener("mouseup", () => (drag = null));
    window.addEventListener("mousemove", (e) => {
      if (!drag || !this.pixels) return;
      if (drag.measure) {
        const p = this.toImage(e);
        this.measure.x1 = p.x;
        this.measure.y1 = p.y;
        this.draw();
        return;
      }
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (drag.pan) {
        this.cx = drag.cx + dx;
        this.cy = drag.cy + dy;
        this.draw();
      } else {
        // Horizontal: window width; vertical: level (as in common PACS viewers).
        this.windowWidth = Math.max(1, drag.width + dx * 64);
        this.windowLevel = drag.level + dy * 64;
        this.render();
        this.draw();
      }
    });
    this.canvas.addEventListener("wheel", (e) => {
      if (!this.pixels) return;
      e.preventDefault();
      const rect = this.canvas.getBoundingClientRect();
      const mx = ((e.clientX - rect.left) * this.canvas.width) / rect.width;
      const my = ((e.clientY - rect.top) * this.canvas.height) / rect.height;
      const factor = e.deltaY < 0 ? 1.15 : 1 / 1.15;
      this.cx = mx - (mx - this.cx) * factor;
      this.cy = my - (my - this.cy) * factor;
      this.zoom *= factor;
      this.draw();
    }, { passive: false });
  }

  renderInfo() {
    const image = this.image;
    this.info.replaceChildren();
    const head = document.createElement("div");
    const status = document.createElement("span");
    status.className = "status";
    if (image.status === "done") {
      const scope = image.scope || {};
      if (image.category === "out_of_scope") {
        // Not scored: the probability is kept for research only, never shown as an answer.
        head.append(badge(image.category), " not scored");
      } else {
        head.append(badge(image.category), ` probability ${image.probability.toFixed(2)}`);
      }
      const meaning = document.createElement("div");
      meaning.className = "meaning";
      meaning.textContent = MEANING[image.category] || "";
      if (scope.reason) meaning.textContent += ` (${scope.reason})`;
      if (scope.note) meaning.textContent += ` Note: ${scope.note}.`;
      const model = document.createElement("div");
      model.className = "model";
      const version = image.model.version ? ` version ${image.model.version}` : "";
      model.textContent = `Model ${image.model.id}${version}. AI result, an aid, not a diagnosis.`;
      this.info.append(head, meaning, model, this.feedbackForm());
      if (image.operating_point) meaning.after(operatingPoint(image.operating_point));
    } else if (image.status === "refused" || image.status === "failed") {
      head.append(badge(null, "refused"), " not analysed: ", image.error || "");
      this.info.append(head);
    } else {
      head.append(badge(null, "pending"), " ", status);
      this.info.append(head);
    }
  }

  feedbackForm() {
    const form = document.createElement("div");
    form.className = "feedback";
    const note = document.createElement("textarea");
    note.placeholder = "Note (optional)";
    note.maxLength = 4000;
    const saved = document.createElement("span");
    saved.className = "saved";
    const unsaved = document.createElement("span");
    unsaved.className = "unsaved";
    const saveNote = document.createElement("button");
    saveNote.type = "button";
    saveNote.textContent = "Save note";
    saveNote.dataset.feedback = "save-note";
    // The reader's own last verdict on this image: a note changed after it is saved with it again.
    let verdict = null;
    let savedNote = "";
    const noteState = () => {
      const dirty = note.value !== savedNote;
      unsaved.textContent = !dirty ? "" : verdict ? "Note not saved yet" : "The note is saved with your verdict: choose one";
      unsaved.dataset.unsaved = dirty ? "yes" : "no";
      saveNote.hidden = !(dirty && verdict);
    };
    // One verdict at a time, in the order given (leaving the note for a button sends two).
    let queue = Promise.resolve();
    const send = (body) => (queue = queue.then(() => post(body)));
    const post = async (body) => {
      const text = note.value;
      try {
        const result = await apiJson(`/api/images/${this.image.id}/feedback`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(Object.assign({ note: text }, body)),
        });
        saved.textContent = `Saved: ${result.fracture ? "fracture" : "no fracture"} (${result.reader})`;
        saved.dataset.saved = "yes";
        verdict = body;
        savedNote = text;
      } catch (error) {
        saved.textContent = "Not saved: " + error.message;
      }
      noteState();
    };
    const buttons = ["doubt", "out_of_scope"].includes(this.image.category)
      ? [["Fracture", { fracture: true }], ["No fracture", { fracture: false }]]
      : [["Agree", { agree: true }], ["Disagree", { agree: false }]];
    for (const [label, body] of buttons) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.dataset.feedback = label.toLowerCase().replace(" ", "-");
      button.addEventListener("click", () => send(body));
      form.append(button);
    }
    const last = (this.image.feedback || []).slice(-1)[0];
    if (last) {
      saved.textContent = `Saved: ${last.fracture ? "fracture" : "no fracture"} (${last.reader})`;
      saved.dataset.saved = "yes";
      note.value = savedNote = last.note;
      if (last.reader === state.reader) {
        verdict = this.image.category === "doubt" ? { fracture: last.fracture } : { agree: last.agrees };
      }
    }
    note.addEventListener("input", noteState);
    // Leaving the note (or Ctrl+Enter) saves it with the verdict already given.
    note.addEventListener("blur", () => verdict && note.value !== savedNote && send(verdict));
    note.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && verdict) {
        event.preventDefault();
        send(verdict);
      }
    });
    saveNote.addEventListener("click", () => verdict && send(verdict));
    noteState();
    form.append(saved, saveNote, unsaved, note);
    return form;
  }
}

// ---- the answer's meaning in numbers, the heat map's legend, the shortcuts -----------------------

function percent(rate) {
  return `${Math.round(rate.value * 100)}% (${Math.round(rate.lower * 100)}–${Math.round(rate.upper * 100)}%)`;
}

// The operating point behind the answer with its measured sensitivity and specificity, and the data
// they were measured on.
function operatingPoint(point) {
  const div = document.createElement("div");
  div.className = "operating-point";
  const word = WORD[point.name] || point.name;
  div.textContent = `${word} threshold ${point.threshold.toFixed(2)}: sensitivity ${percent(point.sensitivity)}, ` +
    `specificity ${percent(point.specificity)}, 95% intervals; measured on ${point.measured_on}.`;
  div.dataset.sensitivity = point.sensitivity.value;
  div.dataset.specificity = point.specificity.value;
  return div;
}

// The heat map's colours, fixed (the map is a probability per cell): a weak map looks weak.
function renderLegend() {
  const legend = $("#legend");
  legend.replaceChildren();
  if (!state.heatScale) return;
  const label = document.createElement("span");
  label.textContent = "Heat map:";
  legend.append(label);
  for (const stop of state.heatScale.stops) {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b, a] = stop.rgba;
    swatch.dataset.value = stop.value;
    swatch.dataset.rgba = stop.rgba.join(",");
    const colour = `rgba(${r}, ${g}, ${b}, ${(a / 255).toFixed(3)})`;
    swatch.style.backgroundImage = `linear-gradient(${colour}, ${colour})`; // over a mid-gray ground
    swatch.title = `cell value ${stop.value}`;
    legend.append(swatch);
  }
  const ends = document.createElement("span");
  ends.textContent = `${state.heatScale.floor} → 1 per cell (nothing drawn below ${state.heatScale.floor})`;
  legend.append(ends);
}

$("#help-close").addEventListener("click", () => ($("#help").hidden = true));
$("#help-open").addEventListener("click", () => ($("#help").hidden = false));

// ---- start ---------------------------------------------------------------------------------------

(function boot() {
  const saved = JSON.parse(sessionStorage.getItem("fracsight") || "null");
  if (saved) {
    state.token = saved.token;
    state.reader = saved.reader;
    state.role = saved.role;
    start();
  } else {
    show("sign-in");
  }
})();

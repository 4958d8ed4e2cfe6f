// fracsight reader study: the reading page (one case at a time, keyboard-driven) and the
// administrator's study view. Plain JavaScript, no build step. What the page may show is decided by
// the service: in the unaided arm its answers carry no AI at all, and the heat map is refused.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: null, name: null, role: null, study: null, item: null, views: [], active: 0,
  call: null, click: null, shownAt: 0, heat: true, busy: false, words: {} };

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  return fetch(path, Object.assign({}, options, { headers }));
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(body.detail || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---- sign in -------------------------------------------------------------------------------------

function show(view) {
  for (const id of ["sign-in", "reader-view", "admin-view"]) $("#" + id).hidden = id !== view;
  $("#sign-out").hidden = view === "sign-in";
}

async function signIn(token) {
  state.token = token;
  const me = await apiJson("/api/me");
  if (state.token !== token) return; // signed out (or in as someone else) meanwhile
  state.name = me.name;
  state.role = me.role;
  sessionStorage.setItem("fracsight", JSON.stringify({ token, reader: me.name, role: me.role }));
  $("#who").textContent = "Signed in as " + me.name;
  for (const c of (await apiJson("/api/categories")).categories) state.words[c.category] = c;
  state.study = new URLSearchParams(location.search).get("study");
  if (state.role === "admin") return openAdmin();
  if (!state.study) {
    const mine = await apiJson("/api/reader-studies/mine");
    state.study = mine.length ? mine[0].id : null;
  }
  show("reader-view");
  if (!state.study) return message("You are not a reader of any study.");
  return loadCase();
}

$("#sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await signIn($("#token").value.trim());
  } catch (error) {
    $("#sign-in-error").textContent = "Sign-in failed: " + error.message;
  }
});

$("#sign-out").addEventListener("click", () => {
  state.token = null; // a sign-in still waiting for the server must not store its token again
  sessionStorage.removeItem("fracsight");
  location.reload();
});

function message(text) {
  $("#case-message").textContent = text || "";
}

// ---- the image: window/level, zoom, pan, the suspected site -----------------------------------

class View {
  constructor(holder, index, aided, size, ai) {
    this.index = index;
    this.size = size; // the original image's width and height: clicks are given in its pixels
    this.aided = aided;
    this.ai = aided ? ai || null : null; // the AI's answer on this image (aided arm only)
    this.canvas = document.createElement("canvas");
    this.canvas.className = "study-canvas";
    this.canvas.dataset.index = index;
    holder.appendChild(this.canvas);
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.overlay = null;
    this.bind();
  }

  async load(studyId) {
    const response = await api(`/api/reader-studies/${studyId}/images/${this.index}/pixels`);
    if (!response.ok) throw new Error("the image could not be loaded");
    const buffer = await response.arrayBuffer();
    const head = new DataView(buffer, 0, 8);
    this.height = head.getUint32(0, true);
    this.width = head.getUint32(4, true);
    this.pixels = new Uint16Array(buffer, 8, this.height * this.width);
    const sample = [];
    const step = Math.max(1, Math.floor(this.pixels.length / 65536));
    for (let i = 0; i < this.pixels.length; i += step) sample.push(this.pixels[i]);
    sample.sort((a, b) => a - b);
    this.low0 = sample[Math.floor(sample.length * 0.005)];
    this.high0 = sample[Math.min(sample.length - 1, Math.floor(sample.length * 0.995))];
    this.resetWindow();
    // displayed pixels per original pixel (the display copy may be reduced)
    this.ratio = this.size && this.size.width ? this.width / this.size.width : 1;
    if (this.aided) {
      const layer = await api(`/api/reader-studies/${studyId}/images/${this.index}/overlay.png`);
      if (layer.ok) {
        this.overlay = new Image();
        this.overlay.src = URL.createObjectURL(await layer.blob());
        await this.overlay.decode();
      }
    }
    this.render();
  }

  resetWindow() {
    this.windowWidth = Math.max(1, this.high0 - this.low0);
    this.windowLevel = (this.high0 + this.low0) / 2;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
  }

  render() {
    // Window/level through a 65,536-entry table into an image-sized canvas, then drawn zoomed.
    const lut = new Uint8ClampedArray(65536);
    const low = this.windowLevel - this.windowWidth / 2;
    for (let v = 0; v < 65536; v++) lut[v] = ((v - low) / this.windowWidth) * 255;
    const plain = document.createElement("canvas");
    plain.width = this.width;
    plain.height = this.height;
    const pctx = plain.getContext("2d");
    const data = pctx.createImageData(this.width, this.height);
    for (let i = 0, j = 0; i < this.pixels.length; i++, j += 4) {
      const g = lut[this.pixels[i]];
      data.data[j] = data.data[j + 1] = data.data[j + 2] = g;
      data.data[j + 3] = 255;
    }
    pctx.putImageData(data, 0, 0);
    this.plain = plain;
    this.draw();
  }

  fit() {
    const rect = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(rect.width));
    this.canvas.height = Math.max(1, Math.round(rect.height));
    const scale = Math.min(this.canvas.width / this.width, this.canvas.height / this.height) * this.zoom;
    const x = (this.canvas.width - this.width * scale) / 2 + this.panX;
    const y = (this.canvas.height - this.height * scale) / 2 + this.panY;
    return { scale, x, y };
  }

  draw() {
    if (!this.plain) return;
    const { scale, x, y } = this.fit();
    const ctx = this.canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.plain, x, y, this.width * scale, this.height * scale);
    if (this.overlay && state.heat) {
      ctx.globalAlpha = 0.5;
      ctx.drawImage(this.overlay, x, y, this.width * scale, this.height * scale);
      ctx.globalAlpha = 1;
    }
    this.drawOutline(ctx, x, y, scale);
    if (state.click && state.click.image === this.index) {
      ctx.strokeStyle = "#4a90e2";
      ctx.lineWidth = 2;
      ctx.beginPath();
      const r = this.ratio * scale;
      ctx.arc(x + state.click.x * r, y + state.click.y * r, 14, 0, 2 * Math.PI);
      ctx.stroke();
    }
    this.canvas.dataset.window = Math.round(this.windowWidth);
    this.canvas.dataset.level = Math.round(this.windowLevel);
  }

  // The hot region's outline as the clinical viewer draws it (the same polygon, from the service):
  // solid for "fracture", dashed for "doubt", nothing for "no fracture" and "not scored".
  drawOutline(ctx, x, y, scale) {
    const ai = this.ai || {};
    const style = { fracture: "solid", doubt: "dashed" }[ai.category];
    const points = ai.outline;
    this.canvas.dataset.outline = style && points && points.length > 2 ? style : "none";
    if (this.canvas.dataset.outline === "none") return;
    const r = this.ratio * scale; // canvas pixels per original pixel
    ctx.save();
    ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue(
      ai.category === "fracture" ? "--fracture" : "--doubt").trim() || "#f00";
    ctx.lineWidth = 2.5;
    ctx.setLineDash(style === "dashed" ? [10, 7] : []);
    ctx.beginPath();
    points.forEach(([px, py], i) => (i ? ctx.lineTo(x + px * r, y + py * r) : ctx.moveTo(x + px * r, y + py * r)));
    ctx.closePath();
    ctx.stroke();
    ctx.restore();
  }

  bind() {
    let drag = null;
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("mousedown", (e) => {
      setActive(this.index);
      const mode = e.button === 2 || e.shiftKey ? "window" : e.ctrlKey || e.button === 1 ? "pan" : "click";
      drag = { mode, x: e.clientX, y: e.clientY, moved: false, width: this.windowWidth,
        level: this.windowLevel, panX: this.panX, panY: this.panY };
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag || !this.pixels) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.mode === "window") {
        this.windowWidth = Math.max(1, drag.width + dx * 64);
        this.windowLevel = drag.level + dy * 64;
        this.render();
      } else if (drag.mode === "pan") {
        this.panX = drag.panX + dx;
        this.panY = drag.panY + dy;
        this.draw();
      }
    });
    window.addEventListener("mouseup", (e) => {
      if (drag && drag.mode === "click" && !drag.moved && this.pixels) this.mark(e);
      drag = null;
    });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom = Math.min(16, Math.max(0.25, this.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2)));
      this.draw();
    }, { passive: false });
  }

  mark(e) {
    const rect = this.canvas.getBoundingClientRect();
    const { scale, x, y } = this.fit();
    const px = (e.clientX - rect.left - x) / scale;
    const py = (e.clientY - rect.top - y) / scale;
    if (px < 0 || py < 0 || px >= this.width || py >= this.height) return;
    state.click = { image: this.index, x: px / this.ratio, y: py / this.ratio };
    $("#click-label").textContent = `Suspected site: image ${this.index + 1} at (${Math.round(state.click.x)}, ${Math.round(state.click.y)})`;
    for (const v of state.views) v.draw();
  }
}

function setActive(index) {
  state.active = index;
  state.views.forEach((v, i) => v.canvas.classList.toggle("active", i === index));
}

// ---- reading: the current case, the read, the next case ------------------------------------------

async function loadCase() {
  message("");
  let item;
  try {
    item = await apiJson(`/api/reader-studies/${state.study}/next`);
  } catch (error) {
    $("#reader-view").dataset.state = error.status === 409 ? "washout" : "error";
    $("#read-form").hidden = true;
    return message(error.message);
  }
  if (item.done) {
    $("#reader-view").dataset.state = "done";
    $("#read-form").hidden = true;
    $("#study-viewports").textContent = "";
    $("#ai-answer").hidden = true;
    return message(item.detail);
  }
  if (!item.ready) {
    $("#reader-view").dataset.state = "waiting";
    message("The case's images are still being prepared; this page tries again shortly.");
    return setTimeout(loadCase, 1500);
  }
  state.item = item;
  state.call = null;
  state.click = null;
  $("#call-yes").checked = $("#call-no").checked = false;
  setConfidence(50);
  $("#click-label").textContent = "Suspected site: none (click the image)";
  $("#study-name").textContent = item.name;
  $("#arm-label").textContent = item.arm === "aided" ? "With the AI (aided)" : "Without the AI (unaided)";
  $("#case-position").textContent = `Session ${item.session}, case ${item.position} of ${item.total}`;
  const holder = $("#study-viewports");
  holder.textContent = "";
  const aided = item.arm === "aided";
  state.views = item.images.map((image, i) => new View(holder, i, aided, image.size, image.ai));
  setActive(0);
  showAi(item);
  const loaded = await Promise.allSettled(state.views.map((v) => v.load(state.study)));
  if (loaded.some((r) => r.status === "rejected")) message("An image of this case could not be shown.");
  $("#read-form").hidden = false;
  const view = $("#reader-view");
  view.dataset.case = item.case;
  view.dataset.arm = item.arm;
  view.dataset.position = item.position;
  view.dataset.session = item.session;
  view.dataset.state = "reading";
  state.shownAt = performance.now();
}

function showAi(item) {
  const box = $("#ai-answer");
  box.textContent = "";
  if (item.arm !== "aided" || !item.ai) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const info = state.words[item.ai.category] || { word: item.ai.category, meaning: "" };
  const badge = document.createElement("span");
  badge.className = "badge " + item.ai.category;
  badge.textContent = info.word;
  const text = document.createElement("span");
  text.textContent = ` AI: probability ${item.ai.probability.toFixed(2)}. ${info.meaning}`;
  box.append("Case: ", badge, text);
}

function setConfidence(value) {
  const v = Math.max(0, Math.min(100, Math.round(value)));
  $("#confidence").value = v;
  $("#confidence-value").textContent = v;
}

function setCall(call) {
  state.call = call;
  $("#call-yes").checked = call === "yes";
  $("#call-no").checked = call === "no";
}

async function submitRead() {
  if (state.busy || !state.item || $("#reader-view").dataset.state !== "reading") return;
  if (!state.call) return message("Say fracture yes (Y) or no (N) first.");
  state.busy = true;
  const body = {
    case: state.item.case, fracture: state.call === "yes", confidence: Number($("#confidence").value),
    click: state.click, time_ms: Math.round(performance.now() - state.shownAt),
  };
  try {
    $("#reader-view").dataset.state = "sending";
    await apiJson(`/api/reader-studies/${state.study}/reads`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (error) {
    message(error.message);
  } finally {
    state.busy = false;
  }
  await loadCase();
}

$("#read-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submitRead();
});
$("#call-yes").addEventListener("change", () => setCall("yes"));
$("#call-no").addEventListener("change", () => setCall("no"));
$("#confidence").addEventListener("input", () => setConfidence(Number($("#confidence").value)));
window.addEventListener("resize", () => state.views.forEach((v) => v.draw()));

document.addEventListener("keydown", (e) => {
  if ($("#reader-view").hidden || e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "radio") return;
  const key = e.key.toLowerCase();
  const current = Number($("#confidence").value);
  if (key === "y") setCall("yes");
  else if (key === "n") setCall("no");
  else if (key === "m") setConfidence(100);
  else if (/^[0-9]$/.test(key)) setConfidence(Number(key) * 10);
  else if (key === "arrowup") setConfidence(current + 5);
  else if (key === "arrowdown") setConfidence(current - 5);
  else if (key === "enter") submitRead();
  else if (key === "tab" && state.views.length) setActive((state.active + 1) % state.views.length);
  else if (key === "r" && state.views[state.active]) {
    state.views[state.active].resetWindow();
    state.views[state.active].render();
  } else if (key === "h") {
    state.heat = !state.heat;
    state.views.forEach((v) => v.draw());
  } else if (key === "backspace") {
    state.click = null;
    $("#click-label").textContent = "Suspected site: none (click the image)";
    state.views.forEach((v) => v.draw());
  } else return;
  e.preventDefault();
});

// ---- the administrator: studies, a new study, progress, exports ----------------------------------

async function openAdmin() {
  show("admin-view");
  const body = $("#study-list tbody");
  body.textContent = "";
  for (const s of await apiJson("/api/reader-studies")) {
    const row = body.insertRow();
    const link = document.createElement("a");
    link.href = "?study=" + s.id;
    link.textContent = s.name;
    row.insertCell().append(link);
    for (const v of [s.created_at, s.seed, s.washout_days]) row.insertCell().textContent = v;
  }
  if (state.study) await showProgress(state.study);
}

async function showProgress(id) {
  const p = await apiJson(`/api/reader-studies/${id}`);
  $("#progress").hidden = false;
  $("#progress-title").textContent = p.name;
  const images = Object.entries(p.images).map(([k, v]) => `${v} ${k}`).join(", ");
  $("#progress-summary").textContent = `${p.cases} cases (${p.fractured} fractured), ${p.readers.length} readers, ` +
    `seed ${p.seed}, washout ${p.washout_days} days; images: ${images}. Readers open ` +
    `${location.origin}/static/study.html?study=${p.id}`;
  const body = $("#progress-table tbody");
  body.textContent = "";
  for (const r of p.readers) {
    const row = body.insertRow();
    row.insertCell().textContent = r.reader;
    for (const s of r.sessions) row.insertCell().textContent = `${s.arm}: ${s.read}/${s.total}` +
      (s.finished_at ? ` (ended ${s.finished_at.slice(0, 10)})` : "");
    row.insertCell().textContent = r.sessions[1].opens_at ? r.sessions[1].opens_at.slice(0, 10) : "after session 1";
  }
  $("#analyse-hint").textContent = "Then: " + p.analyse_command;
  const plan = await apiJson(`/api/reader-studies/${id}/plan`);
  $("#plan-output").textContent = `$ ${plan.command}\n` +
    `This study (${plan.readers} readers, ${plan.cases} cases): power ${plan.power.toFixed(2)} for an AUC ` +
    `difference of ${plan.effect} (pilot: ${plan.pilot}).\nreaders  cases  power\n` +
    plan.plan.map((r) => `${String(r.readers).padStart(7)}  ${String(r.cases).padStart(5)}  ${r.power.toFixed(3)}`).join("\n");
  for (const [button, file] of [["#get-reads", "reads.csv"], ["#get-ai", "ai.csv"], ["#get-clicks", "clicks.csv"]]) {
    $(button).onclick = async () => {
      const response = await api(`/api/reader-studies/${id}/${file}`);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = file;
      link.click();
    };
  }
}

$("#create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#create-error").textContent = "";
  const seed = $("#new-seed").value;
  const body = {
    name: $("#new-name").value, readers: $("#new-readers").value.split(",").map((s) => s.trim()).filter(Boolean),
    case_list: $("#new-cases").value, washout_days: Number($("#new-washout").value),
    seed: seed === "" ? null : Number(seed),
  };
  try {
    const made = await apiJson("/api/reader-studies", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    state.study = made.id;
    history.replaceState(null, "", "?study=" + made.id);
    await openAdmin();
  } catch (error) {
    $("#create-error").textContent = error.message;
  }
});

const saved = JSON.parse(sessionStorage.getItem("fracsight") || "null");
if (saved && saved.token) signIn(saved.token).catch(() => show("sign-in"));
else show("sign-in");

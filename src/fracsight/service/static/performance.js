"use strict";
// The AI's performance at this site and its drift alerts (GET /api/performance), drawn as inline
// SVG. Loaded from /static only (the Content-Security-Policy allows no inline script or style):
// every colour and size comes from style.css classes. The sign-in is the worklist's (this tab's
// sessionStorage); every number says what it is measured on.

const SVG = "http://www.w3.org/2000/svg";
const CATEGORY_ORDER = ["fracture", "doubt", "no_fracture", "out_of_scope"];
const CATEGORY_WORDS = { fracture: "fracture", doubt: "doubt", no_fracture: "no fracture", out_of_scope: "out of scope" };
const $ = (selector) => document.querySelector(selector);

function el(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function html(name, text = "", attributes = {}) {
  const node = document.createElement(name);
  node.textContent = text;
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function storedToken() {
  try {
    return (JSON.parse(sessionStorage.getItem("fracsight") || "{}") || {}).token || null;
  } catch (_) {
    return null;
  }
}

async function api(path, token) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) throw new Error("unauthorised");
  if (!response.ok) throw new Error(`the service answered ${response.status}`);
  return response.json();
}

function pct(value) {
  return `${(100 * value).toFixed(1)}%`;
}

function describe(estimate) {
  if (estimate.value === null) return `too few cases (${estimate.k}/${estimate.n})`;
  return `${pct(estimate.value)} (95% CI ${pct(estimate.lower)}–${pct(estimate.upper)}), ${estimate.k}/${estimate.n}`;
}

const W = 760, H = 260, LEFT = 48, RIGHT = 16, TOP = 24, BOTTOM = 40;

// The x position of each month's column, and the frame: y axis 0–100%, a month label under each.
function frame(svg, months, title) {
  svg.appendChild(el("title", {}, title));
  const step = (W - LEFT - RIGHT) / Math.max(1, months.length);
  const x = (i) => LEFT + step * (i + 0.5);
  const y = (v) => TOP + (1 - v) * (H - TOP - BOTTOM);
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    svg.appendChild(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(tick), y2: y(tick), class: "grid" }));
    svg.appendChild(el("text", { x: LEFT - 6, y: y(tick) + 4, class: "axis end" }, `${tick * 100}%`));
  }
  months.forEach((month, i) => {
    svg.appendChild(el("text", { x: x(i), y: H - BOTTOM + 18, class: "axis middle" }, month));
  });
  return { x, y, step };
}

function alertMarks(svg, months, alerts, scale) {
  for (const alert of alerts) {
    const i = months.indexOf(alert.month);
    if (i < 0) continue;
    const at = scale.x(i) - scale.step / 2;
    const mark = el("g", { "data-alert": alert.name, class: "alert-mark" });
    mark.appendChild(el("title", {}, `Drift: ${alert.what} moved in ${alert.month} (${alert.test}, p = ${alert.p_value.toExponential(1)})`));
    mark.appendChild(el("line", { x1: at, x2: at, y1: TOP - 8, y2: H - BOTTOM, class: "alert-line" }));
    mark.appendChild(el("text", { x: at + 4, y: TOP - 10, class: "alert-text" }, `⚠ drift from ${alert.month}: ${alert.name.replaceAll("_", " ")}`));
    svg.appendChild(mark);
  }
}

function ratesChart(target, months, byMonth, point, alerts) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
  const scale = frame(svg, months, `Sensitivity and specificity per month at the ${point} operating point`);
  const series = [["sensitivity", -10], ["specificity", 10]];
  months.forEach((month, i) => {
    const data = byMonth[month].operating_points[point];
    for (const [measure, offset] of series) {
      const e = data[measure];
      const cx = scale.x(i) + offset;
      if (e.value === null) {
        svg.appendChild(el("text", { x: cx, y: scale.y(0.04), class: `axis middle few ${measure}`, "data-few": measure }, "too few"));
        continue;
      }
      const group = el("g", { class: measure, "data-measure": measure, "data-month": month });
      group.appendChild(el("title", {}, `${month} ${measure}: ${describe(e)}; readers' verdicts at this site`));
      group.appendChild(el("line", { x1: cx, x2: cx, y1: scale.y(e.lower), y2: scale.y(e.upper), class: "ci" }));
      group.appendChild(el("line", { x1: cx - 5, x2: cx + 5, y1: scale.y(e.lower), y2: scale.y(e.lower), class: "ci" }));
      group.appendChild(el("line", { x1: cx - 5, x2: cx + 5, y1: scale.y(e.upper), y2: scale.y(e.upper), class: "ci" }));
      group.appendChild(el("circle", { cx, cy: scale.y(e.value), r: 5, class: "dot" }));
      const left = offset < 0; // sensitivity's label on the left, specificity's on the right
      group.appendChild(el("text", { x: left ? cx - 8 : cx + 8, y: scale.y(e.value) + 4, class: left ? "value end" : "value" },
        pct(e.value)));
      svg.appendChild(group);
    }
  });
  svg.appendChild(el("circle", { cx: LEFT + 10, cy: 10, r: 5, class: "sensitivity dot" }));
  svg.appendChild(el("text", { x: LEFT + 20, y: 14, class: "axis" }, "sensitivity"));
  svg.appendChild(el("circle", { cx: LEFT + 110, cy: 10, r: 5, class: "specificity dot" }));
  svg.appendChild(el("text", { x: LEFT + 120, y: 14, class: "axis" }, "specificity (bars: 95% CI)"));
  alertMarks(svg, months, alerts, scale);
  target.replaceChildren(svg);
  const note = months.map((m) => {
    const r = byMonth[m];
    const d = r.operating_points[point];
    return `${m}: readers' verdicts at this site, ${r.with_verdict} cases (${r.fractured} fractured, ` +
      `${r.not_fractured} not, ${r.out_of_scope_with_verdict} out of scope counted apart); ` +
      `sensitivity ${describe(d.sensitivity)}, specificity ${describe(d.specificity)}`;
  });
  $(`#${target.id}-note`).textContent = note.join(". ") + ".";
}

function categoriesChart(target, months, byMonth, alerts) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
  const scale = frame(svg, months, "Shares of the AI's answers per month");
  const width = Math.min(80, scale.step * 0.6);
  months.forEach((month, i) => {
    const counts = byMonth[month].categories;
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    let below = 0;
    for (const category of CATEGORY_ORDER) {
      const n = counts[category] || 0;
      if (!n) continue;
      const share = n / total;
      const bar = el("rect", {
        x: scale.x(i) - width / 2, width, y: scale.y(below + share), height: scale.y(below) - scale.y(below + share),
        class: `cat-${category}`, "data-category": category, "data-month": month,
      });
      bar.appendChild(el("title", {}, `${month}: ${CATEGORY_WORDS[category]} ${n} of ${total} analysed images (${pct(share)})`));
      svg.appendChild(bar);
      if (share > 0.06) {
        svg.appendChild(el("text", { x: scale.x(i) + width / 2 + 4, y: scale.y(below + share / 2) + 4, class: "value" },
          `${CATEGORY_WORDS[category]} ${pct(share)}`));
      }
      below += share;
    }
  });
  alertMarks(svg, months, alerts, scale);
  target.replaceChildren(svg);
  $("#categories-note").textContent = months.map((m) =>
    `${m}: every analysed image at this site, ${byMonth[m].analysed} images`).join(". ") + ".";
}

function alertList(drift, method) {
  const list = $("#alerts");
  list.replaceChildren();
  const reference = drift.reference_month;
  $("#drift-note").textContent = reference === null
    ? drift.note
    : `Each month is compared with ${reference} (the first month with at least ${method.min_drift_cases} ` +
      `analysed images); a month with fewer is not tested. ${method.tests.length} tests a month, each at ` +
      `p < ${drift.per_test_alpha.toPrecision(2)} (${method.correction}): at most a ${pct(method.family_alpha)} chance of a false alarm a month.`;
  if (!drift.alerts.length) {
    list.appendChild(html("li", reference === null ? "Nothing tested yet." : "No drift found."));
    return;
  }
  for (const a of drift.alerts) {
    list.appendChild(html("li",
      `${a.month}: ${a.what} moved (${a.kind}), against ${a.reference_month}: ${a.test}, ` +
      `statistic ${a.statistic.toFixed(3)}, p = ${a.p_value.toExponential(2)} (alert below ${a.alpha.toPrecision(2)}); ` +
      `every analysed image at this site, ${a.n_month} images against ${a.n_reference}.`,
      { "data-name": a.name, "data-month": a.month, class: "alert" }));
  }
}

function regionTable(byRegion) {
  const body = $("#regions tbody");
  body.replaceChildren();
  for (const [region, r] of Object.entries(byRegion)) {
    const row = html("tr", "", { "data-region": region });
    row.appendChild(html("td", region));
    for (const point of ["fracture", "doubt_or_fracture"]) {
      row.appendChild(html("td", describe(r.operating_points[point].sensitivity)));
      row.appendChild(html("td", describe(r.operating_points[point].specificity)));
    }
    row.appendChild(html("td", `readers' verdicts at this site, ${r.with_verdict} cases (${r.out_of_scope_with_verdict} out of scope, apart)`));
    body.appendChild(row);
  }
}

function methodList(method) {
  const list = $("#method");
  list.replaceChildren(
    ...Object.entries(method.operating_points).map(([name, words]) => html("li", `${name}: ${words}.`)),
    html("li", `Intervals: ${method.confidence_interval}. Label: ${method.label}. Month: ${method.month}. Region: ${method.region}.`),
    html("li", `A rate needs at least ${method.min_cases} cases: ${method.min_cases_meaning}.`),
    ...method.tests.map((t) => html("li", `Drift (${t.kind}): ${t.what}, by ${t.test}.`)),
    ...Object.entries(method.not_monitored).map(([what, why]) => html("li", `Not watched: ${what}, ${why}.`)),
  );
}

function draw(report) {
  const months = Object.keys(report.by_month);
  const alerts = report.drift.alerts;
  const overall = report.overall;
  $("#summary").textContent = months.length
    ? `Overall: readers' verdicts at this site, ${overall.with_verdict} cases of ${overall.analysed} analysed images; ` +
      `sensitivity ${describe(overall.operating_points.fracture.sensitivity)}, ` +
      `specificity ${describe(overall.operating_points.fracture.specificity)} at the fracture call.`
    : "No analysed images yet.";
  for (const point of ["fracture", "doubt_or_fracture"]) {
    ratesChart($(`#rates-${point}`), months, report.by_month, point, alerts);
  }
  categoriesChart($("#categories"), months, report.by_month, alerts);
  alertList(report.drift, report.method);
  regionTable(report.by_region);
  methodList(report.method);
}

async function show(token) {
  const me = await api("/api/me", token);
  $("#who").textContent = `Signed in as ${me.name}`;
  sessionStorage.setItem("fracsight", JSON.stringify({ token, reader: me.name, role: me.role }));
  draw(await api("/api/performance", token));
  $("#sign-in").hidden = true;
  $("#report").hidden = false;
}

function askToken(message = "") {
  $("#report").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
}

$("#sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  show($("#token").value.trim()).catch((error) =>
    askToken(error.message === "unauthorised" ? "The token was not accepted." : error.message));
});

const token = storedToken();
if (token) show(token).catch(() => askToken("Please sign in again."));
else askToken();

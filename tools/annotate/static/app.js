// The annotation page: draws the server's people on the image and turns mouse and keys into API calls.
// Every change goes to the server (which saves it at once); the page keeps no data of its own.
// Strings from the server (keypoint names, image names, messages) are only ever set as text, never as markup: they
// come from checkpoints and files, and the page's Content-Security-Policy forbids inline script besides.
"use strict";

const SIDE_COLOURS = { left: "#60a5fa", right: "#fb923c", centre: "#4ade80" };
const PERSON_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#e6beff"];
const FADED = 0.45;  // opacity of the people not selected
const personColour = (index) => PERSON_COLOURS[index % PERSON_COLOURS.length];  // a person's identity colour
function textColour(hex) {  // black on light colours, white on dark ones (relative luminance)
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
    .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.18 ? "#000000" : "#ffffff";
}
const HIT_RADIUS = 10;  // screen pixels
const DOUBT = 0.5;  // a keypoint whose confidence is below this is drawn as doubtful
const ZOOM_STEP = 1.25;  // one + / - key press
const ZOOM_LIMITS = [0.5, 40];  // relative to the fitted view

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const image = new Image();

const app = {
  meta: null, images: [], name: null, view: null, threshold: 0.3,
  selected: { person: null, keypoint: 0 }, armed: false, mode: "idle", drag: null, box: null, pan: null,
  fit: null, zoomed: false, spaceDown: false,
  busy: false, lastLatencyMs: null, latencies: [], lastModelMs: null, ready: false, redraws: 0,
};
window.annotator = app;  // for the browser test and for debugging

// ---- server --------------------------------------------------------------------------------------------------
let queue = Promise.resolve();
function call(path, body) {  // one request at a time, in order
  const run = async () => {
    app.busy = true;
    try {
      const response = await fetch(path, body === undefined ? {} : {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      const text = await response.text();
      let data;
      try { data = JSON.parse(text); } catch (err) {
        throw new Error(`${response.status}: the server answered without JSON (${text.slice(0, 120)})`);
      }
      if (!response.ok) {
        const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
        throw new Error(`${response.status}: ${detail}`);
      }
      return data;
    } finally { app.busy = false; }
  };
  const result = queue.then(run);
  queue = result.catch(() => {});
  return result;
}

function report(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// what the next click on the image will do (shown after every message but errors)
function nextClick() {
  if (app.mode === "box") return "drag a box around the missed person (Esc cancels)";
  if (app.armed && app.selected.person !== null) {
    return `next click places ${app.meta.keypoint_names[app.selected.keypoint]} of #${app.selected.person} (Esc cancels)`;
  }
  return "next click selects a person (in its box); drag a keypoint to move it, or click it or ] / [ to arm it";
}
function hint(text = null) {
  const zoom = zoomLevel();
  const parts = [text, nextClick(), Math.abs(zoom - 1) > 1e-6 ? `zoom ${Math.round(zoom * 100)}% (f: fit)` : null];
  report(parts.filter(Boolean).join(" · "));
}
function disarm() { app.armed = false; }

async function act(path, extra = {}, started = null) {
  try {
    const state = await call(path, { image: app.name, ...extra });
    show(state, started);
    return state;
  } catch (err) { report(err.message, true); }
}

// ---- geometry ------------------------------------------------------------------------------------------------
// app.view is the one transform between image pixels and canvas pixels: drawing, hit-testing and the coordinates
// sent to the server all go through toScreen / toImage. app.fit is the whole image fitted in the canvas; zoom and
// pan change app.view only (app.zoomed: keep it across redraws; a new image starts fitted).
function layout() {
  const rect = canvas.getBoundingClientRect();
  canvas.width = rect.width; canvas.height = rect.height;
  if (!app.state) return;
  const scale = Math.min(rect.width / app.state.width, rect.height / app.state.height);
  app.fit = { scale, x: (rect.width - app.state.width * scale) / 2, y: (rect.height - app.state.height * scale) / 2 };
  if (!app.zoomed || !app.view) app.view = { ...app.fit };
}
const toScreen = (x, y) => [app.view.x + x * app.view.scale, app.view.y + y * app.view.scale];
const toImage = (sx, sy) => [(sx - app.view.x) / app.view.scale, (sy - app.view.y) / app.view.scale];

function zoomAt(sx, sy, factor) {  // the image point under (sx, sy) stays there
  if (!app.view || !app.fit) return;
  const [ix, iy] = toImage(sx, sy);
  const scale = Math.min(Math.max(app.view.scale * factor, app.fit.scale * ZOOM_LIMITS[0]), app.fit.scale * ZOOM_LIMITS[1]);
  app.view = { scale, x: sx - ix * scale, y: sy - iy * scale };
  app.zoomed = true;
  draw(); hint();
}
function zoomCentre(factor) { zoomAt(canvas.width / 2, canvas.height / 2, factor); }
function resetZoom() { app.zoomed = false; if (app.fit) app.view = { ...app.fit }; draw(); hint(); }
const zoomLevel = () => (app.view && app.fit ? app.view.scale / app.fit.scale : 1);
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
const clampToImage = ([x, y]) => [Math.min(Math.max(x, 0), app.state.width), Math.min(Math.max(y, 0), app.state.height)];

function sideOf(k) {
  for (const [l, r] of app.meta.flip_pairs) { if (k === l) return "left"; if (k === r) return "right"; }
  return "centre";
}
function shownPeople() {
  return app.state ? app.state.people.filter((p) => p.touched || p.score >= app.threshold) : [];
}
function person(index) { return app.state.people.find((p) => p.index === index); }

function keypointScreen(index, k) {  // used by the browser test
  const p = person(index);
  const rect = canvas.getBoundingClientRect();
  const [x, y] = toScreen(p.keypoints[k][0], p.keypoints[k][1]);
  return { x, y, left: rect.left + x, top: rect.top + y };
}
app.keypointScreen = keypointScreen;
app.screenPoint = (x, y) => {  // image pixels -> canvas and viewport pixels (for the browser test)
  const rect = canvas.getBoundingClientRect();
  const [sx, sy] = toScreen(x, y);
  return { x: sx, y: sy, left: rect.left + sx, top: rect.top + sy };
};
app.imagePoint = (left, top) => {  // viewport pixels -> image pixels
  const rect = canvas.getBoundingClientRect();
  return toImage(left - rect.left, top - rect.top);
};

function hitKeypoint(sx, sy) {
  let best = null;
  for (const p of shownPeople()) {
    p.keypoints.forEach((kp, k) => {
      const [x, y] = toScreen(kp[0], kp[1]);
      const d = Math.hypot(x - sx, y - sy);
      const preferred = p.index === app.selected.person ? 0.5 : 0;  // ties go to the selected person
      if (d <= HIT_RADIUS && (!best || d - preferred < best.d)) best = { person: p.index, keypoint: k, d: d - preferred };
    });
  }
  return best;
}
function hitBox(sx, sy) {
  const [x, y] = toImage(sx, sy);
  const inside = shownPeople().filter((p) => x >= p.box[0] && x <= p.box[2] && y >= p.box[1] && y <= p.box[3]);
  inside.sort((a, b) => (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) - (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]));
  return inside.length ? inside[0].index : null;
}

// ---- drawing -------------------------------------------------------------------------------------------------
function draw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!app.state || !app.view) return;
  ctx.drawImage(image, app.view.x, app.view.y, app.state.width * app.view.scale, app.state.height * app.view.scale);
  // the others faded first, the selected person last, on top
  const people = shownPeople();
  people.filter((p) => p.index !== app.selected.person).forEach((p) => drawPerson(p));
  people.filter((p) => p.index === app.selected.person).forEach((p) => drawPerson(p));
  if (app.box) {
    ctx.strokeStyle = "#ffffff"; ctx.setLineDash([6, 4]); ctx.lineWidth = 1.5;
    ctx.strokeRect(app.box.x0, app.box.y0, app.box.x1 - app.box.x0, app.box.y1 - app.box.y0);
    ctx.setLineDash([]);
  }
  app.redraws += 1;
}

function drawPerson(p) {
  const selectedPerson = p.index === app.selected.person;
  const points = p.keypoints.map((kp, k) => {
    if (app.drag && app.drag.person === p.index && app.drag.keypoint === k) return [app.drag.sx, app.drag.sy];
    return toScreen(kp[0], kp[1]);
  });
  const colour = personColour(p.index);
  const [bx0, by0] = toScreen(p.box[0], p.box[1]);
  const [bx1, by1] = toScreen(p.box[2], p.box[3]);
  ctx.globalAlpha = selectedPerson ? 1 : FADED;
  if (selectedPerson) {  // a dark halo under the box, so its colour reads on any image
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 5; ctx.strokeRect(bx0, by0, bx1 - bx0, by1 - by0);
  } else { ctx.setLineDash([6, 4]); }
  ctx.strokeStyle = colour; ctx.lineWidth = selectedPerson ? 3 : 1.5;
  ctx.strokeRect(bx0, by0, bx1 - bx0, by1 - by0);
  ctx.setLineDash([]);
  ctx.lineWidth = selectedPerson ? 3 : 2;
  for (const [a, b] of app.meta.skeleton) {
    if (p.visibility[a] === 0 || p.visibility[b] === 0) continue;
    const sa = sideOf(a), sb = sideOf(b);
    ctx.strokeStyle = SIDE_COLOURS[sa === sb ? sa : "centre"];
    ctx.beginPath(); ctx.moveTo(...points[a]); ctx.lineTo(...points[b]); ctx.stroke();
  }
  points.forEach(([x, y], k) => drawKeypoint(p, k, x, y, selectedPerson));
  ctx.globalAlpha = selectedPerson ? 1 : 0.85;
  drawLabel(`#${p.index} ${p.score.toFixed(2)}${p.source === "model" ? "" : " " + p.source}`, colour,
    bx0, by0, bx1, by1, selectedPerson);
  ctx.globalAlpha = 1;
}

// the person's label: in its identity colour, text black or white (whichever contrasts), above the box's top-left
// corner, or just inside the box where that would leave the canvas; always kept inside the canvas
function drawLabel(text, colour, bx0, by0, bx1, by1, selectedPerson) {
  if (bx1 < 0 || by1 < 0 || bx0 > canvas.width || by0 > canvas.height) return;  // the box is out of view
  ctx.font = `${selectedPerson ? "bold " : ""}12px system-ui, sans-serif`;
  const w = Math.ceil(ctx.measureText(text).width) + 8, h = 16;
  let x = bx0, y = by0 - h;
  if (y < 0) y = by0;
  x = Math.min(Math.max(x, 0), Math.max(canvas.width - w, 0));
  y = Math.min(Math.max(y, 0), Math.max(canvas.height - h, 0));
  ctx.fillStyle = colour; ctx.fillRect(x, y, w, h);
  if (selectedPerson) { ctx.strokeStyle = "#000000"; ctx.lineWidth = 1; ctx.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1); }
  ctx.fillStyle = textColour(colour); ctx.textBaseline = "middle";
  ctx.fillText(text, x + 4, y + h / 2 + 0.5);
  ctx.textBaseline = "alphabetic";
}

function drawKeypoint(p, k, x, y, selectedPerson) {
  const r = selectedPerson ? 5 : 4;
  const colour = SIDE_COLOURS[sideOf(k)];
  const visibility = p.visibility[k];
  ctx.lineWidth = 1.5;
  if (visibility === 0) {  // not labelled: a grey cross
    ctx.strokeStyle = "#aaaaaa";
    ctx.beginPath(); ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r);
    ctx.stroke();
  } else if (p.pinned[k]) {  // placed by the user: a square
    ctx.fillStyle = colour; ctx.strokeStyle = "#ffffff";
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r); ctx.strokeRect(x - r, y - r, 2 * r, 2 * r);
  } else {
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI);
    if (visibility === 1) { ctx.strokeStyle = colour; ctx.setLineDash([2, 2]); ctx.stroke(); ctx.setLineDash([]); }
    else { ctx.fillStyle = colour; ctx.fill(); ctx.strokeStyle = "#000000"; ctx.lineWidth = 0.8; ctx.stroke(); }
  }
  // confidence (only from a model with a quality head): an arc, full circle = 1; doubtful keypoints get a red ring
  if (app.state.confidence_shown && !p.pinned[k] && visibility !== 0) {
    const c = p.confidence[k];
    ctx.strokeStyle = c < DOUBT ? "#ff3b3b" : "#ffffff"; ctx.lineWidth = c < DOUBT ? 2.5 : 1.5;
    ctx.beginPath(); ctx.arc(x, y, r + 3, -Math.PI / 2, -Math.PI / 2 + 2 * Math.PI * Math.max(c, 0.08)); ctx.stroke();
  }
  if (selectedPerson && k === app.selected.keypoint) {
    ctx.strokeStyle = "#ffff00"; ctx.lineWidth = app.armed ? 3 : 1.5;
    ctx.beginPath(); ctx.arc(x, y, r + 7, 0, 2 * Math.PI); ctx.stroke();
  }
}

// ---- side panel ----------------------------------------------------------------------------------------------
function panel() {
  const s = app.state;
  $("image-name").textContent = `${s.position + 1} / ${app.images.length}  ${s.image}`;
  $("image-status").textContent = s.status.replace("_", " ");
  $("image-status").className = `status ${s.status}`;
  $("progress").max = s.progress.total; $("progress").value = s.progress.done;
  $("progress-text").textContent = `done ${s.progress.done} / ${s.progress.total}`;
  $("threshold").value = app.threshold; $("threshold-value").textContent = app.threshold.toFixed(2);
  $("undo").disabled = !s.can_undo; $("redo").disabled = !s.can_redo;
  const list = $("people"); list.replaceChildren();
  for (const p of s.people) {
    const li = document.createElement("li");
    const hidden = !(p.touched || p.score >= app.threshold);
    const swatch = element("span", "swatch", "■");
    swatch.style.color = personColour(p.index);  // CSSOM, which the policy allows
    li.append(swatch, ` #${p.index}  score ${p.score.toFixed(2)}  ${p.source}${p.touched ? " ✎" : ""}${hidden ? " (below threshold)" : ""}`);
    li.className = (p.index === app.selected.person ? "selected " : "") + (hidden ? "dim" : "");
    li.onclick = () => select(p.index, app.selected.keypoint);
    list.appendChild(li);
  }
  const table = $("keypoints"); table.replaceChildren();
  const p = app.selected.person === null ? null : person(app.selected.person);
  if (!p) return;
  app.meta.keypoint_names.forEach((name, k) => {
    const row = table.insertRow();
    row.className = k === app.selected.keypoint ? "selected" : "";
    const label = row.insertCell();
    label.append(element("span", sideOf(k), "●"), ` ${name}${p.pinned[k] ? " ■" : ""}`);
    const cell = row.insertCell();
    if (app.state.confidence_shown) {
      const bar = element("div", "bar"), fill = element("div");
      bar.title = `confidence ${p.confidence[k].toFixed(2)}`;
      fill.style.width = `${Math.round(100 * p.confidence[k])}%`;  // CSSOM, which the policy allows
      if (p.confidence[k] < DOUBT && !p.pinned[k]) fill.style.background = "#ff3b3b";
      bar.appendChild(fill);
      cell.appendChild(bar);
    }
    const menu = document.createElement("select");
    [["2", "visible"], ["1", "occluded"], ["0", "not labelled"]].forEach(([v, label]) => menu.add(new Option(label, v)));
    menu.value = String(p.visibility[k]);
    menu.onchange = () => setVisibility(p.index, k, Number(menu.value));
    row.insertCell().appendChild(menu);
    row.onclick = (e) => { if (e.target.tagName !== "SELECT") select(p.index, k, true); };
  });
}

function show(state, started = null) {
  const sameImage = app.state && app.state.image === state.image;
  app.state = state;
  if (!sameImage) { app.threshold = state.threshold; app.zoomed = false; disarm(); }
  if (app.selected.person !== null && !state.people.some((p) => p.index === app.selected.person && !p.deleted)) {
    app.selected.person = null;
  }
  if (app.selected.person === null) {
    const first = shownPeople()[0];
    app.selected = { person: first ? first.index : null, keypoint: 0 };
  }
  app.drag = null;
  layout(); draw(); panel();
  if (started !== null) {  // latency: mouse release -> poses redrawn (the canvas is drawn; measured once painted)
    requestAnimationFrame(() => setTimeout(() => {
      app.lastLatencyMs = performance.now() - started; app.latencies.push(app.lastLatencyMs);
      app.lastModelMs = state.model_ms;
      hint(`refined in ${app.lastLatencyMs.toFixed(0)} ms (model ${state.model_ms.toFixed(0)} ms) · saved`);
    }, 0));
  } else {
    hint(`${state.image}: ${shownPeople().length} people shown · saved to ${app.meta.annotations}`);
  }
}

// ---- actions -------------------------------------------------------------------------------------------------
async function openImage(name) {
  try {
    report(`opening ${name}…`);
    app.ready = false;
    const state = await call("/api/open", { image: name });
    app.name = name; app.state = null;
    await new Promise((resolve, reject) => {
      image.onload = resolve; image.onerror = () => reject(new Error(`cannot load image ${name}`));
      image.src = `/api/file/${name.split("/").map(encodeURIComponent).join("/")}`;
    });
    app.selected = { person: null, keypoint: 0 };
    show(state);
    app.ready = true;
  } catch (err) { report(err.message, true); }
}

const usable = (row) => row.status !== "unreadable";

function step(delta) {  // the next image in that direction that can be opened (unreadable ones are skipped)
  let at = app.images.findIndex((row) => row.image === app.name);
  for (at += delta; at >= 0 && at < app.images.length; at += delta) {
    if (usable(app.images[at])) { openImage(app.images[at].image); return; }
  }
}

function reportUnreadable() {
  const bad = app.images.filter((row) => !usable(row));
  if (bad.length) report(`${bad.length} image(s) skipped: ${bad.map((row) => row.problem).join(" · ")}`, true);
}

// armed: the selected keypoint was chosen on purpose (clicked, ] / [, the list); the next click on the image places
// it, wherever it is (also inside another person's box). A visibility key, Escape, any other edit or a selection
// without arming disarms it.
function select(index, keypoint, armed = false) {
  app.selected = { person: index, keypoint: keypoint ?? 0 };
  app.armed = armed && index !== null;
  draw(); panel(); hint();
}

function cyclePerson(delta) {
  const people = shownPeople().map((p) => p.index);
  if (!people.length) return;
  const at = people.indexOf(app.selected.person);
  select(people[(at + delta + people.length) % people.length], app.selected.keypoint);
}

// ] / [: the next / previous keypoint; with a quality head in the order of doubt (least confident first, the
// keypoints placed by the user last), so ] from the first goes through the worst ones
function keypointOrder(p) {
  const order = app.meta.keypoint_names.map((_, k) => k);
  if (!app.state.confidence_shown) return order;
  const key = (k) => (p.pinned[k] ? 2 : 0) + p.confidence[k];
  return order.sort((a, b) => key(a) - key(b) || a - b);
}
function cycleKeypoint(delta) {
  if (app.selected.person === null) return;
  const p = person(app.selected.person);
  if (!p) return;
  const order = keypointOrder(p);
  // with a quality head an unarmed ] starts at the most doubtful keypoint; otherwise it steps from the selected one
  const fresh = app.state.confidence_shown && !app.armed;
  const here = fresh ? (delta > 0 ? -1 : 0) : order.indexOf(app.selected.keypoint);
  select(app.selected.person, order[(here + delta + order.length) % order.length], true);
}

function place(index, keypoint, x, y, started) {
  [x, y] = clampToImage([x, y]);
  app.selected = { person: index, keypoint };
  app.armed = false;
  return act("/api/refine", { clicks: [{ person: index, keypoint, x, y }] }, started);
}

function withPerson(fn) {
  if (app.selected.person === null) { report("select a person first (Tab)", true); return; }
  fn(app.selected.person);
}

function setVisibility(index, keypoint, visibility) {
  disarm(); draw();
  return act("/api/visibility", { person: index, keypoint, visibility });
}

function boxMode(text) { disarm(); app.mode = "box"; canvas.style.cursor = "cell"; draw(); hint(text); }

async function accept() {
  await act("/api/accept", { done: true });
  const images = await call("/api/images");
  app.images = images.images;
  step(1);
}

// ---- mouse ---------------------------------------------------------------------------------------------------
function mousePos(e) { const rect = canvas.getBoundingClientRect(); return [e.clientX - rect.left, e.clientY - rect.top]; }

// panning: the middle button, or the left one with Space or Shift held
const pans = (e) => e.button === 1 || (e.button === 0 && (app.spaceDown || e.shiftKey));

canvas.addEventListener("mousedown", (e) => {
  if (!app.state || !app.view) return;
  const [sx, sy] = mousePos(e);
  if (pans(e)) {
    e.preventDefault();  // no middle-button autoscroll or paste
    app.pan = { sx, sy, x: app.view.x, y: app.view.y };
    canvas.style.cursor = "grabbing";
    return;
  }
  if (e.button !== 0) return;
  if (app.mode === "box") { app.box = { x0: sx, y0: sy, x1: sx, y1: sy }; return; }
  const hit = hitKeypoint(sx, sy);
  if (hit) {  // a drag moves this keypoint; a click on it arms it (or, when armed, may place the armed one: mouseup)
    app.drag = { person: hit.person, keypoint: hit.keypoint, sx, sy, startX: sx, startY: sy };
    if (!app.armed) app.selected = { person: hit.person, keypoint: hit.keypoint };
    draw(); panel();
  } else {
    app.pressed = { sx, sy };
  }
});
canvas.addEventListener("auxclick", (e) => { if (e.button === 1) e.preventDefault(); });

window.addEventListener("mousemove", (e) => {
  if (!app.state) return;
  const [sx, sy] = mousePos(e);
  if (app.pan) {
    app.view = { ...app.view, x: app.pan.x + sx - app.pan.sx, y: app.pan.y + sy - app.pan.sy };
    app.zoomed = true; draw();
  } else if (app.box) { app.box.x1 = sx; app.box.y1 = sy; draw(); }
  else if (app.drag) { app.drag.sx = sx; app.drag.sy = sy; draw(); }
});

window.addEventListener("mouseup", (e) => {
  const started = performance.now();
  const [sx, sy] = mousePos(e);
  if (app.pan) { app.pan = null; canvas.style.cursor = app.mode === "box" ? "cell" : "crosshair"; hint(); return; }
  if (e.button !== 0) return;
  if (app.box) {
    const { x0, y0, x1, y1 } = app.box;
    app.box = null; app.mode = "idle"; canvas.style.cursor = "crosshair";
    const [ix0, iy0] = clampToImage(toImage(Math.min(x0, x1), Math.min(y0, y1)));
    const [ix1, iy1] = clampToImage(toImage(Math.max(x0, x1), Math.max(y0, y1)));
    act("/api/add_person", { box: [ix0, iy0, ix1, iy1] }, started).then((state) => {
      if (state) { const added = Math.max(...state.people.map((p) => p.index)); select(added, 0); }
    });
    return;
  }
  if (app.drag) {
    const drag = app.drag;
    if (Math.hypot(sx - drag.startX, sy - drag.startY) > 2) {
      const [x, y] = toImage(sx, sy);
      place(drag.person, drag.keypoint, x, y, started);
    } else if (app.armed && drag.person !== app.selected.person) {
      // armed, and the click fell on another person's keypoint: the armed keypoint goes here all the same
      app.drag = null;
      const [x, y] = toImage(sx, sy);
      place(app.selected.person, app.selected.keypoint, x, y, started);
    } else { app.drag = null; select(drag.person, drag.keypoint, true); }  // a click on a keypoint arms it
    return;
  }
  if (app.pressed) {  // a click on the image, not on a keypoint
    app.pressed = null;
    if (e.target !== canvas) return;
    if (app.armed && app.selected.person !== null) {
      // select-and-click: the armed keypoint goes here, inside any person's box or none
      const [x, y] = toImage(sx, sy);
      place(app.selected.person, app.selected.keypoint, x, y, started);
      return;
    }
    const boxHit = hitBox(sx, sy);
    if (boxHit !== null && boxHit !== app.selected.person) select(boxHit, app.selected.keypoint);
    else hint();
  }
});

// the wheel zooms around the pointer
canvas.addEventListener("wheel", (e) => {
  if (!app.state || !app.view) return;
  e.preventDefault();
  const lines = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? canvas.height : 1;
  const [sx, sy] = mousePos(e);
  zoomAt(sx, sy, Math.exp(-e.deltaY * lines / 500));
}, { passive: false });

// ---- keys ----------------------------------------------------------------------------------------------------
window.addEventListener("keyup", (e) => { if (e.key === " ") app.spaceDown = false; });
window.addEventListener("blur", () => { app.spaceDown = false; });
window.addEventListener("keydown", (e) => {
  if (!app.state || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const key = e.key, ctrl = e.ctrlKey || e.metaKey;
  const handled = () => e.preventDefault();
  if (ctrl && (key === "z" || key === "Z")) { handled(); disarm(); act(e.shiftKey ? "/api/redo" : "/api/undo"); return; }
  if (ctrl && key === "y") { handled(); disarm(); act("/api/redo"); return; }
  if (ctrl) return;
  switch (key) {
    case "ArrowRight": case "n": handled(); step(1); break;
    case "ArrowLeft": case "p": handled(); step(-1); break;
    case "Tab": handled(); cyclePerson(e.shiftKey ? -1 : 1); break;
    case "]": case "ArrowDown": handled(); cycleKeypoint(1); break;
    case "[": case "ArrowUp": handled(); cycleKeypoint(-1); break;
    case "0": case "1": case "2":  // the selected keypoint's visibility; disarms it
      handled();
      withPerson((index) => setVisibility(index, app.selected.keypoint, Number(key)));
      break;
    case "+": case "=": handled(); zoomCentre(ZOOM_STEP); break;
    case "-": case "_": handled(); zoomCentre(1 / ZOOM_STEP); break;
    case "f": handled(); resetZoom(); break;
    case " ": handled(); app.spaceDown = true; break;
    case "Enter": case "a": handled(); disarm(); accept(); break;
    case "b": handled(); boxMode(); break;
    case "Delete": case "Backspace": case "x": handled(); disarm(); withPerson((index) => act("/api/delete_person", { person: index })); break;
    case "s": handled(); disarm(); withPerson((index) => act("/api/swap", { person: index })); break;
    case "z": handled(); disarm(); act("/api/undo"); break;
    case "y": handled(); disarm(); act("/api/redo"); break;
    case "Escape":
      app.mode = "idle"; disarm(); app.box = null; app.drag = null; app.pan = null; canvas.style.cursor = "crosshair";
      draw(); hint();
      break;
    default: break;
  }
});

// ---- buttons, slider, start ----------------------------------------------------------------------------------
$("prev").onclick = () => step(-1);
$("next").onclick = () => step(1);
$("accept").onclick = accept;
$("add").onclick = () => boxMode();
$("delete").onclick = () => { disarm(); withPerson((index) => act("/api/delete_person", { person: index })); };
$("swap").onclick = () => { disarm(); withPerson((index) => act("/api/swap", { person: index })); };
$("undo").onclick = () => { disarm(); act("/api/undo"); };
$("redo").onclick = () => { disarm(); act("/api/redo"); };
$("threshold").addEventListener("input", (e) => { app.threshold = Number(e.target.value); draw(); panel(); });
$("threshold").addEventListener("change", (e) => {
  e.target.blur();  // keys go back to the canvas shortcuts
  act("/api/threshold", { threshold: Number(e.target.value) });
});
// a clicked button gives the focus back, so Enter/Space do not press it again
document.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => b.blur()));
// the canvas follows its stage's size (the window's, and the side panel's and status bar's)
new ResizeObserver(() => { layout(); draw(); }).observe($("stage"));

(async function start() {
  try {
    app.meta = await call("/api/meta");
    const listing = await call("/api/images");
    app.images = listing.images;
    const current = app.images.find((row) => row.image === listing.current && usable(row)) || app.images.find(usable);
    if (!current) { reportUnreadable(); return; }
    await openImage(current.image);
    if (app.images.some((row) => !usable(row))) reportUnreadable();
  } catch (err) { report(err.message, true); }
})();

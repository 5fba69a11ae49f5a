// streamd's status page: polls /api/cameras about once a second and shows each camera's latest input and
// output, fetched as JPEG only when the camera has a new frame. Data goes into the page as text only.
"use strict";

const REFRESH_MS = 1000;
const PICTURE_WIDTH = 640; // pixels asked for, one of the server's widths (streamd.daemon.status.WIDTHS); the browser fits the card
// "+" stays itself: a token from `openssl rand -base64` holds it, and form decoding would make it a space
const token = new URLSearchParams(location.search.replace(/\+/g, "%2B")).get("token");
const authorization = token ? { Authorization: "Bearer " + token } : {};
const cards = new Map(); // camera name -> { el, shown: {input, output}, loading: {input, output}, url: {...} }

function fmt(value, digits = 0) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function adaptationText(a) {
  if (a.running) return "running now";
  const last = a.last;
  if (!last) return a.available ? "never run" : "not adapted here (the camera does not collect, or its config fixes its model)";
  let text = `${last.outcome} ${when(last.finished)}`;
  if (last.current && last.adapted) {
    text += ` (PSNR ${fmt(last.current.psnr, 2)} → ${fmt(last.adapted.psnr, 2)} dB, ` +
      `AuC ${fmt(last.current.auc_rebalanced, 3)} → ${fmt(last.adapted.auc_rebalanced, 3)})`;
  } else if (last.detail && last.outcome !== "kept") {
    text += `: ${last.detail}`;
  }
  return text;
}

function referenceText(r) {
  if (!r) return "none yet (built from the camera's day frames at nightfall)";
  const hours = r.age_s / 3600;
  const age = hours < 1 ? `${fmt(r.age_s / 60)} min` : `${fmt(hours, 1)} h`;
  const fit = r.fits ? "fits the view" : `does not fit the view (${r.misfit_frames} frames): generic colour`;
  return `${r.frames} day frames, ${age} old; ${fit}`;
}

async function loadReference(card, name, builtAt) {
  card.loading.reference = true;
  try {
    const reply = await fetch(`reference/${encodeURIComponent(name)}.jpg`, { headers: authorization, cache: "no-store" });
    if (!reply.ok) return;
    const url = URL.createObjectURL(await reply.blob());
    const img = card.el.querySelector("img.reference");
    await new Promise((resolve) => { img.onload = img.onerror = resolve; img.src = url; });
    if (card.url.reference) URL.revokeObjectURL(card.url.reference);
    card.url.reference = url;
    card.shown.reference = builtAt;
    img.dataset.loaded = img.naturalWidth > 0 ? "yes" : "no";
    card.el.querySelector(".day-reference").hidden = false;
  } catch (e) {
    // the next refresh tries again
  } finally {
    card.loading.reference = false;
  }
}

function newCard(name) {
  const el = document.getElementById("card").content.firstElementChild.cloneNode(true);
  el.dataset.camera = name;
  el.querySelector(".name").textContent = name;
  el.querySelector(".adapt").addEventListener("click", () => requestAdaptation(name, el));
  const card = { el, shown: {}, loading: {}, url: {} };
  cards.set(name, card);
  return card;
}

function show(card, cam) {
  const el = card.el;
  const set = (selector, value) => { el.querySelector(selector).textContent = value; };
  el.dataset.state = cam.state;
  el.title = cam.source;
  set(".state", cam.state);
  set(".daynight", cam.daynight === "night" ? "night: colorizing" : cam.daynight === "day" ? "day: passing through" : "–");
  set(".fps", `${fmt(cam.fps.in, 1)} in, ${fmt(cam.fps.out, 1)} out`);
  set(".latency", cam.latency_ms.p50 === null ? "–" : `${fmt(cam.latency_ms.p50)} / ${fmt(cam.latency_ms.p99)} ms`);
  set(".dropped", `${cam.dropped} of ${cam.frames}`);
  set(".model", `${cam.model.kind}: ${cam.model.id} (${cam.model.provider})`);
  set(".adaptation", adaptationText(cam.adaptation));
  set(".reference", referenceText(cam.reference));
  if (cam.reference && cam.reference.built_at !== card.shown.reference && !card.loading.reference) {
    loadReference(card, cam.name, cam.reference.built_at);
  }
  if (!cam.reference) card.el.querySelector(".day-reference").hidden = true;
  set(".error", cam.state === "running" ? "" : cam.error || "");
  const button = el.querySelector(".adapt");
  button.disabled = !cam.adaptation.available || cam.adaptation.running;
  for (const which of ["input", "output"]) {
    const seq = cam.seq[which];
    if (seq !== null && seq !== card.shown[which] && !card.loading[which]) loadPicture(card, cam.name, which);
  }
}

async function loadPicture(card, name, which) {
  card.loading[which] = true;
  try {
    const query = (which === "input" ? "input=1&" : "") + `width=${PICTURE_WIDTH}`;
    const reply = await fetch(`snapshot/${encodeURIComponent(name)}.jpg?${query}`, { headers: authorization, cache: "no-store" });
    if (!reply.ok) return;
    const seq = Number(reply.headers.get("X-Frame-Seq"));
    const url = URL.createObjectURL(await reply.blob());
    const img = card.el.querySelector("img." + which);
    await new Promise((resolve) => { img.onload = img.onerror = resolve; img.src = url; });
    if (card.url[which]) URL.revokeObjectURL(card.url[which]);
    card.url[which] = url;
    card.shown[which] = seq;
    img.dataset.seq = seq;
    img.dataset.loaded = img.naturalWidth > 0 ? "yes" : "no";
  } catch (e) {
    // the next refresh tries again
  } finally {
    card.loading[which] = false;
  }
}

async function requestAdaptation(name, el) {
  const out = el.querySelector(".adapt-reply");
  out.textContent = "asking…";
  try {
    const reply = await fetch(`adapt/${encodeURIComponent(name)}`, { method: "POST", headers: authorization });
    const doc = await reply.json();
    out.textContent = reply.ok ? `adaptation ${doc.status}` : doc.error || `HTTP ${reply.status}`;
  } catch (e) {
    out.textContent = `failed: ${e.message}`;
  }
}

function render(doc) {
  const status = document.getElementById("status");
  status.textContent = doc.status;
  status.dataset.status = doc.status;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  const main = document.getElementById("cameras");
  const names = new Set();
  for (const cam of doc.cameras) {
    names.add(cam.name);
    const card = cards.get(cam.name) || newCard(cam.name);
    if (card.el.parentNode !== main) main.appendChild(card.el);
    show(card, cam);
  }
  for (const [name, card] of cards) {
    if (!names.has(name)) {
      card.el.remove();
      for (const url of Object.values(card.url)) URL.revokeObjectURL(url);
      cards.delete(name);
    }
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const reply = await fetch("api/cameras", { headers: authorization, cache: "no-store" });
    if (reply.status === 401) throw new Error("this listener needs its token: open the page as /?token=TOKEN");
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    render(await reply.json());
  } catch (e) {
    status.textContent = `unreachable: ${e.message}`;
    status.dataset.status = "unreachable";
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();

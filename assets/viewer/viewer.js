// The Case review CT viewer: a Streamlit component (components.v1 protocol, no build step) around NiiVue.
//
// niivue.js.gz is NiiVue as bundled in the pinned ipyniivue wheel, gzipped next to this file by
// pages/_viewer.py (nothing is fetched from the network): served as application/gzip, the server sends
// its 1.6 MB as they are instead of compressing the 5 MB module again for every browser, and this file
// inflates it (DecompressionStream) and imports it from a blob URL. Python sends the CT and the attribution map
// as gzipped NIfTI bytes once per browser: each volume has a content id, the component keeps the bytes it
// got (bounded, least recently used first out) and reports the ids it holds in its value; Python sends a
// volume's bytes only while the component does not hold it, and a component that lacks one asks for it
// ("need"). Scrolling, window/level, zoom, pan, crosshairs and the HU readout all run here, with no server
// call; NiiVue draws on demand only (no animation loop), at one canvas pixel per CSS pixel. The crosshair
// position goes back to Python (debounced) so the slice survives page switches, and is kept in the tab so that it
// survives a reload that comes before the report.
async function loadNiivue() {
  const resp = await fetch("niivue.js.gz"); // index.html starts this download beside this file's
  if (!resp.ok) throw new Error(`niivue.js.gz: HTTP ${resp.status}`);
  const text = await new Response(resp.body.pipeThrough(new DecompressionStream("gzip"))).text();
  const url = URL.createObjectURL(new Blob([text], { type: "text/javascript" }));
  try { return (await import(url)).Niivue; } finally { URL.revokeObjectURL(url); }
}
const niivue = loadNiivue(); // started at once: the render arguments (and the CT) arrive meanwhile
niivue.catch(() => {}); // reported by init, which awaits it

const DRAG = { crosshair: 8, windowing: 9, pan: 3 };
const REPORT_DELAY_MS = 2000; // the crosshair goes to Python (a rerun of the viewer block) once scrolling pauses this
                              // long, or at once when the mouse leaves the viewer: not at every short pause
const CACHE_BYTES = 384 * 2 ** 20; // the gzipped volumes kept for a later case switch or overlay toggle
const ASK_LIMIT = 3;                // requests for one volume's bytes before the viewer gives up
const MIN_HEIGHT = 240;             // the canvas never shrinks below this (CSS pixels)
const SCROLL_SCALE = 0.7;           // canvas resolution while slices scroll (about half the pixels to shade)
const SHARP_AFTER_MS = 450;         // full resolution again once scrolling pauses this long

const state = {
  nv: null, volumeId: null, overlayId: null, windowId: null, positionId: null, overlayOpts: null,
  draws: 0, lastDrawAt: 0, loaded: false, error: null, lastWindow: null, busy: Promise.resolve(),
  hoverTile: 0, renders: 0, received: 0, receivedBytes: 0, asked: {}, seq: 0,
  buffers: new Map(), // content id -> ArrayBuffer (gzipped NIfTI), in least recently used order
};
window.ctehrViewer = state; // for the browser tests and the benchmark

function post(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data || {}), "*");
}
function setValue(value) { post("streamlit:setComponentValue", { value, dataType: "json" }); }
function setHeight() { post("streamlit:setFrameHeight", { height: document.body.scrollHeight }); }

function toArrayBuffer(data) {
  if (data == null) return null;
  if (data instanceof ArrayBuffer) return data;
  if (ArrayBuffer.isView(data)) return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  if (typeof data === "string") { // base64
    const bin = atob(data); const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  throw new Error("unsupported volume data " + typeof data);
}

function held() {
  const ids = new Set(state.buffers.keys());
  if (state.volumeId && state.loaded) ids.add(state.volumeId);
  if (state.overlayId) ids.add(state.overlayId);
  return Array.from(ids);
}

function keep(id, buffer) {
  // remember a volume's bytes by content id; the oldest go first past CACHE_BYTES (a larger one is not kept)
  state.buffers.delete(id);
  if (buffer.byteLength > CACHE_BYTES) return;
  state.buffers.set(id, buffer);
  let total = 0;
  for (const b of state.buffers.values()) total += b.byteLength;
  for (const [k, b] of state.buffers) {
    if (total <= CACHE_BYTES) break;
    state.buffers.delete(k); total -= b.byteLength;
  }
}

function bytesFor(id, data) {
  // the volume's bytes: sent with this render (kept for later), or kept from an earlier one, or null
  if (data != null) {
    const buffer = toArrayBuffer(data);
    state.received += 1; state.receivedBytes += buffer.byteLength;
    delete state.asked[id];
    keep(id, buffer);
    return buffer;
  }
  const buffer = state.buffers.get(id);
  if (buffer) { state.buffers.delete(id); state.buffers.set(id, buffer); } // most recently used
  return buffer || null;
}

function report(extra) {
  const nv = state.nv;
  const value = { held: held(), volume_id: state.volumeId, seq: ++state.seq };
  if (nv && nv.volumes.length && state.loaded) {
    value.mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
    value.vox = Array.from(nv.frac2vox(nv.scene.crosshairPos));
  }
  setValue(Object.assign(value, extra || {}));
}

function ask(id) {
  // this viewer lacks a volume whose bytes Python did not send (it thought we held them): ask for them
  const n = (state.asked[id] || 0) + 1;
  state.asked[id] = n;
  if (n > ASK_LIMIT) throw new Error(`the server did not send volume ${id} after ${ASK_LIMIT} requests`);
  clearTimeout(reportTimer); reportTimer = null;
  report({ need: id });
}

function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1); }

function showError(text) {
  state.error = text;
  const el = document.getElementById("error");
  for (const id of ["bar", "wrap", "readout", "help"]) document.getElementById(id).hidden = true; // the page
  el.hidden = false; el.textContent = text;                                                      // falls back
  setHeight();
  setValue({ error: text });
}

function updateWindowText() {
  const nv = state.nv;
  if (!nv || !nv.volumes.length) return;
  const lo = nv.volumes[0].cal_min, hi = nv.volumes[0].cal_max;
  if (state.lastWindow && state.lastWindow[0] === lo && state.lastWindow[1] === hi) return;
  state.lastWindow = [lo, hi];
  document.getElementById("window-text").textContent =
    `W ${fmt(hi - lo)} L ${fmt((hi + lo) / 2)} HU  [${fmt(lo)}, ${fmt(hi)}]`;
}

const SCALE_MM = [5, 10, 20, 50, 100, 200];

function updateScale() {
  // a millimetre scale bar under the axial tile, from two canvas points' world positions (zoom included)
  const nv = state.nv, bar = document.getElementById("scale");
  const tile = nv && nv.volumes.length ? nv.screenSlices.find((x) => x.axCorSag === 0) : null;
  if (!tile) { bar.hidden = true; return; }
  const [l, t, w, h] = tile.leftTopWidthHeight;
  const key = [l, t, w, h, nv.scene.pan2Dxyzmm[3]].join(",");
  if (key === state.scaleKey) return;
  state.scaleKey = key;
  const y = t + h / 2, x0 = l + w * 0.4, x1 = l + w * 0.6;
  const f0 = nv.canvasPos2frac([x0, y]), f1 = nv.canvasPos2frac([x1, y]);
  if (f0[0] < 0 || f1[0] < 0) { bar.hidden = true; return; }
  const m0 = nv.frac2mm(f0), m1 = nv.frac2mm(f1);
  const mmPerPx = Math.hypot(m1[0] - m0[0], m1[1] - m0[1], m1[2] - m0[2]) / (x1 - x0); // device pixels
  const dpr = nv.uiData.dpr || 1;
  const fits = SCALE_MM.filter((mm) => mm / mmPerPx <= 0.4 * w);
  if (!fits.length || !(mmPerPx > 0)) { bar.hidden = true; return; }
  const mm = fits[fits.length - 1];
  bar.hidden = false;
  bar.style.left = `${l / dpr + 6}px`;
  bar.style.top = `${(t + h) / dpr - 20}px`;
  bar.style.width = `${mm / mmPerPx / dpr}px`;
  bar.textContent = `${mm} mm`;
  state.mmPerCssPx = mmPerPx * dpr;
}

function crossText() {
  const nv = state.nv;
  if (!nv || !nv.volumes.length) return "";
  const vox = nv.frac2vox(nv.scene.crosshairPos);
  const hu = nv.volumes[0].getValue(vox[0], vox[1], vox[2]);
  const dims = nv.volumes[0].dimsRAS;
  const mark = (plane) => (state.hoverTile === plane ? "\u25b8" : ""); // the plane the wheel and arrow keys step
  return `crosshair: HU ${fmt(hu)} | ${mark(2)}sagittal ${vox[0] + 1}/${dims[1]} ${mark(1)}coronal ${vox[1] + 1}/${dims[2]} `
    + `${mark(0)}axial ${vox[2] + 1}/${dims[3]}`;
}

let reportTimer = null;
function scheduleReport() {
  clearTimeout(reportTimer);
  reportTimer = setTimeout(() => { reportTimer = null; report(); }, REPORT_DELAY_MS);
  keepInTab();
}

// A reload (F5) within REPORT_DELAY_MS of scrolling came before the report: the server restored the slice before
// the scroll. So each crosshair change is also kept in the tab's sessionStorage (this tab only, same origin as the
// app) with the page's address and the CT's content id; the first CT loaded after a reload of that same address
// takes it back when it was written before this page load, and reports it at once.
const TAB_KEY = "ctehr-viewer-crosshair";
function keepInTab() {
  const nv = state.nv;
  if (!nv || !nv.volumes.length || !state.loaded) return;
  try {
    sessionStorage.setItem(TAB_KEY, JSON.stringify({ href: window.parent.location.href, volume_id: state.volumeId,
      mm: Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3), at: Date.now() }));
  } catch (e) { /* storage refused (private mode, quota): a reload then opens the server's slice, as before */ }
}
function keptBeforeReload(volumeId) { // the crosshair (mm) this tab showed before a reload of the same address
  try {
    const top = window.parent, kept = JSON.parse(sessionStorage.getItem(TAB_KEY) || "null");
    const nav = top.performance.getEntriesByType("navigation")[0];
    if (!kept || !nav || nav.type !== "reload" || kept.href !== top.location.href) return null;
    if (kept.volume_id !== volumeId || !(kept.at < top.performance.timeOrigin) || kept.mm.length !== 3) return null;
    return kept.mm.map(Number);
  } catch (e) { return null; } // another origin's frame, unreadable storage: the server's slice
}
function flushReport() {
  if (reportTimer === null) return;
  clearTimeout(reportTimer); reportTimer = null;
  report();
}

function hoverReadout(ev) { // the HU under the mouse; true when the mouse is over a slice tile
  const nv = state.nv;
  if (!nv || !nv.volumes.length) return;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const x = (ev.clientX - rect.left) * dpr, y = (ev.clientY - rect.top) * dpr;
  const tile = nv.screenSlices.findIndex((s) => {
    const [l, t, w, h] = s.leftTopWidthHeight;
    return s.axCorSag <= 2 && x >= l && x <= l + w && y >= t && y <= t + h;
  });
  if (tile >= 0) choosePlane(nv.screenSlices[tile].axCorSag);
  const frac = nv.canvasPos2frac([x, y]);
  const el = document.getElementById("hover");
  if (frac[0] < 0) { el.textContent = "outside the image"; return tile >= 0; }
  const vox = nv.frac2vox(frac);
  const hu = nv.volumes[0].getValue(vox[0], vox[1], vox[2]);
  const mm = nv.frac2mm(frac);
  let text = `HU ${fmt(hu)} at voxel (${vox[0]}, ${vox[1]}, ${vox[2]}), ${fmt(mm[0])}, ${fmt(mm[1])}, ${fmt(mm[2])} mm RAS`;
  if (nv.volumes.length > 1 && nv.volumes[1].opacity > 0) {
    text += ` | map ${nv.volumes[1].getValue(vox[0], vox[1], vox[2]).toFixed(2)}`;
  }
  el.textContent = text;
  state.hoverHU = hu;
  return tile >= 0;
}

function setLeftMode(mode) {
  const nv = state.nv;
  nv.opts.dragModePrimary = mode;
  nv.setMouseEventConfig({
    leftButton: { primary: mode, withShift: DRAG.windowing, withCtrl: DRAG.pan },
    rightButton: DRAG.windowing, centerButton: DRAG.pan,
  });
  for (const b of document.querySelectorAll("#bar button[data-mode]")) {
    b.classList.toggle("on", Number(b.dataset.mode) === mode);
    b.setAttribute("aria-pressed", String(Number(b.dataset.mode) === mode));
  }
}

function zoomBy(factor) {
  const nv = state.nv;
  const z = Math.min(Math.max(nv.scene.pan2Dxyzmm[3] * factor, 0.5), 20);
  nv.scene.pan2Dxyzmm[3] = Math.round(z * 100) / 100;
  nv.drawScene();
}

function setResolution(scale) {
  // canvas pixels per CSS pixel; no draw here (the caller draws, which also lays the tiles out again)
  const nv = state.nv, c = nv.canvas;
  if ((nv.uiData.dpr || 1) === scale) return false;
  nv.opts.forceDevicePixelRatio = scale === 1 ? -1 : scale; // what NiiVue's own resize handler then keeps
  nv.uiData.dpr = scale;
  c.width = Math.max(1, Math.round(c.offsetWidth * scale));
  c.height = Math.max(1, Math.round(c.offsetHeight * scale));
  nv.gl.viewport(0, 0, c.width, c.height);
  nv.textSizePoints();
  return true;
}

function choosePlane(plane) { // 0 axial, 1 coronal, 2 sagittal: the plane the wheel and arrow keys step
  if (state.hoverTile === plane) return;
  state.hoverTile = plane;
  document.getElementById("cross").textContent = crossText();
}

let sharpTimer = null;
function stepSlice(delta) {
  // While slices scroll the canvas draws at SCROLL_SCALE of its CSS size (the compositor scales it up): software
  // WebGL shades every pixel of the three tiles at each slice change; once scrolling pauses for SHARP_AFTER_MS
  // the slice is drawn again at full resolution, the image read.
  const nv = state.nv;
  const plane = state.hoverTile; // 0 axial, 1 coronal, 2 sagittal
  setResolution(SCROLL_SCALE);
  clearTimeout(sharpTimer);
  sharpTimer = setTimeout(() => { sharpTimer = null; if (setResolution(1)) nv.drawScene(); }, SHARP_AFTER_MS);
  nv.moveCrosshairInVox(plane === 2 ? delta : 0, plane === 1 ? delta : 0, plane === 0 ? delta : 0);
}

function fitHeight() {
  // The canvas is as tall as the three tiles need at this width (at most the height Python asked for): NiiVue
  // lays them out in a grid at the largest scale that fits, so a wide frame left black bands above and below
  // them (blank pixels cost little to draw; the page below the viewer moves up).
  const nv = state.nv;
  if (!nv || !nv.volumes.length) return;
  const wrap = document.getElementById("wrap");
  wrap.style.height = `${state.maxHeight}px`;
  nv.resizeListener(); // the layout at the full height
  const dpr = nv.uiData.dpr || 1;
  const layout = () => { // the tiles' height in CSS pixels and the axial tile's width
    const tiles = nv.screenSlices.filter((x) => x.axCorSag <= 2);
    if (!tiles.length) return null;
    const top = Math.min(...tiles.map((x) => x.leftTopWidthHeight[1]));
    const bottom = Math.max(...tiles.map((x) => x.leftTopWidthHeight[1] + x.leftTopWidthHeight[3]));
    return { h: (bottom - top) / dpr, w: tiles[0].leftTopWidthHeight[2] };
  };
  const full = layout();
  if (full && full.h < state.maxHeight - 8) {
    let height = Math.max(Math.ceil(full.h) + 2, MIN_HEIGHT);
    wrap.style.height = `${height}px`; nv.resizeListener();
    const fitted = layout(); // NiiVue keeps room for the colour bar below the tiles: add what the tiles lost
    if (fitted && fitted.w < full.w - 0.5) {
      height = Math.min(Math.ceil(full.h + (height - fitted.h)) + 1, state.maxHeight);
      wrap.style.height = `${height}px`; nv.resizeListener();
    }
  }
  state.fittedWidth = wrap.clientWidth;
  setHeight();
}

async function init(height) {
  const canvas = document.getElementById("gl");
  state.maxHeight = height;
  document.getElementById("wrap").style.height = `${height}px`;
  const test = document.createElement("canvas").getContext("webgl2");
  if (!test) { showError("This browser offers no WebGL2, which the CT viewer needs."); return false; }
  const Niivue = await niivue;
  const nv = new Niivue({
    sliceType: 3, multiplanarShowRender: 0, multiplanarLayout: 2, isRadiologicalConvention: true,
    isOrientationTextVisible: true, isRuler: true, isColorbar: true, show3Dcrosshair: false,
    crosshairColor: [0.1, 0.8, 1.0, 0.9], crosshairWidth: 1, backColor: [0, 0, 0, 1],
    dragMode: DRAG.windowing, dragModePrimary: DRAG.crosshair, isResizeCanvas: true,
    dragAndDropEnabled: false, logLevel: "warn", loadingText: "loading CT ...", fontMinPx: 12,
    forceDevicePixelRatio: -1, // one canvas pixel per CSS pixel (a HiDPI screen would draw 4x the pixels); less while scrolling
  });
  state.nv = nv;
  await nv.attachToCanvas(canvas, false); // no multisampling: 2D slices do not need it
  const draw = nv.drawScene.bind(nv);
  nv.drawScene = (...a) => {
    const r = draw(...a);
    state.draws += 1; state.lastDrawAt = performance.now();
    updateWindowText();
    updateScale();
    return r;
  };
  setLeftMode(DRAG.crosshair);
  window.addEventListener("resize", () => { // a new frame width changes the tiles' scale: fit again
    if (document.getElementById("wrap").clientWidth !== state.fittedWidth) requestAnimationFrame(fitHeight);
  });
  nv.onLocationChange = () => {
    document.getElementById("cross").textContent = crossText();
    scheduleReport();
  };
  canvas.addEventListener("mousemove", hoverReadout);
  canvas.addEventListener("mouseenter", () => canvas.focus({ preventScroll: true })); // no jump of the page
  canvas.addEventListener("mouseleave", flushReport); // say where the crosshair is before the user clicks elsewhere
  // ctrl/cmd + wheel zooms; a plain wheel over a tile scrolls its slices (and the page does not scroll)
  canvas.addEventListener("wheel", (ev) => {
    const overTile = hoverReadout(ev);
    if (ev.ctrlKey || ev.metaKey) {
      ev.preventDefault(); ev.stopImmediatePropagation();
      zoomBy(ev.deltaY < 0 ? 1.15 : 1 / 1.15);
    } else if (overTile && ev.deltaY !== 0) { // one slice per notch, the direction NiiVue's own wheel uses
      ev.preventDefault(); ev.stopImmediatePropagation();
      stepSlice(ev.deltaY < 0 ? -1 : 1);
    }
  }, { capture: true, passive: false });
  canvas.addEventListener("keydown", (ev) => {
    const step = { ArrowUp: 1, PageUp: 1, ArrowDown: -1, PageDown: -1 }[ev.key];
    const plane = ev.ctrlKey || ev.metaKey || ev.altKey ? undefined : { a: 0, c: 1, s: 2 }[ev.key.toLowerCase()];
    if (step !== undefined) { ev.preventDefault(); ev.stopImmediatePropagation(); stepSlice(step); }
    if (plane !== undefined) { ev.preventDefault(); ev.stopImmediatePropagation(); choosePlane(plane); }
  }, { capture: true });
  for (const b of document.querySelectorAll("#bar button[data-mode]")) {
    b.addEventListener("click", () => setLeftMode(Number(b.dataset.mode)));
  }
  document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.25));
  document.getElementById("zoom-out").addEventListener("click", () => zoomBy(1 / 1.25));
  document.getElementById("reset").addEventListener("click", () => {
    nv.scene.pan2Dxyzmm = [0, 0, 0, 1];
    if (state.window) { applyWindow(state.window); }
    nv.drawScene();
  });
  return true;
}

function applyWindow(win) {
  const nv = state.nv;
  if (!nv.volumes.length) return;
  nv.volumes[0].cal_min = win[0]; nv.volumes[0].cal_max = win[1];
  nv.updateGLVolume();
}

function applyOverlayOpts(o) {
  const nv = state.nv;
  const same = state.overlayOpts && JSON.stringify(state.overlayOpts) === JSON.stringify(o);
  state.overlayOpts = o;
  if (nv.volumes.length < 2 || same) return; // every updateGLVolume re-uploads all volumes: only on a change
  const map = nv.volumes[1];
  map.colormap = o.colormap;
  map.cal_min = o.threshold; map.cal_max = 1.0;
  map.opacity = o.show ? o.opacity : 0.0;
  nv.updateGLVolume();
}

function applyPosition(mm) {
  const nv = state.nv;
  if (!nv.volumes.length || !mm) return;
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
  document.getElementById("cross").textContent = crossText();
}

async function render(args) {
  state.renders += 1;
  if (!state.nv) {
    let ok = false;
    try { ok = await init(args.height || 520); } catch (e) { showError("The CT viewer could not start: " + e); }
    if (!ok) return;
  }
  const nv = state.nv;
  state.window = args.window;
  let loadedNow = false; // a volume loaded: report at the end (position applied), so Python stops sending its bytes
  if (args.volume_id !== state.volumeId) {
    const buffer = bytesFor(args.volume_id, args.volume);
    if (!buffer) { ask(args.volume_id); return; }
    state.volumeId = args.volume_id; state.overlayId = null; state.windowId = args.window_id; state.loaded = false;
    while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
    await nv.addVolumeFromUrl({ url: "ct.nii.gz", name: "ct.nii.gz", buffer,
      colormap: "gray", cal_min: args.window[0], cal_max: args.window[1] });
    state.positionId = null;
    state.loaded = true;
    loadedNow = true;
    fitHeight();
  } else if (args.volume != null) {
    bytesFor(args.volume_id, args.volume); // sent again before our report arrived: counted, nothing to load
  }
  if (args.window_id !== state.windowId) { state.windowId = args.window_id; applyWindow(args.window); }
  // the map: a new id replaces the loaded one; no id (overlay off, or the map not ready) hides it but keeps it,
  // so switching the overlay back on costs neither bytes nor a reload
  const overlayId = args.overlay_id || null;
  if (overlayId && overlayId !== state.overlayId) {
    const buffer = bytesFor(overlayId, args.overlay);
    if (!buffer) { ask(overlayId); return; }
    while (nv.volumes.length > 1) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
    const t0 = performance.now();
    const show = !!args.show_overlay;
    await nv.addVolumeFromUrl({ url: "map.nii", name: "map.nii", buffer,
      colormap: args.colormap, opacity: show ? args.opacity : 0, cal_min: args.threshold, cal_max: 1.0 });
    state.overlayId = overlayId;
    state.overlayLoadMs = performance.now() - t0;
    state.overlayShownAt = performance.now();
    state.overlayOpts = { colormap: args.colormap, threshold: args.threshold, opacity: args.opacity, show };
    loadedNow = true;
  } else if (overlayId && args.overlay != null) {
    bytesFor(overlayId, args.overlay);
  }
  applyOverlayOpts({ colormap: args.colormap, threshold: args.threshold, opacity: args.opacity,
                     show: !!args.show_overlay && overlayId !== null && overlayId === state.overlayId });
  if (args.position_id !== state.positionId) {
    // a jump within the case on view (Python's "go to the map's strongest spot"): say where the crosshair is now
    const jump = state.positionId !== null && state.loaded && !loadedNow && state.volumeId === args.volume_id;
    state.positionId = args.position_id;
    applyPosition(args.position_mm);
    if (jump) scheduleReport();
  }
  if (!state.reloadChecked && state.loaded) { // the first CT shown in this frame: a reload's slice comes back
    state.reloadChecked = true;
    const mm = keptBeforeReload(state.volumeId);
    if (mm) { applyPosition(mm); loadedNow = true; }
  }
  document.getElementById("cross").textContent = crossText();
  updateWindowText();
  setHeight();
  if (loadedNow) { clearTimeout(reportTimer); reportTimer = null; report(); }
}

window.addEventListener("message", (ev) => {
  const msg = ev.data;
  if (!msg || msg.type !== "streamlit:render") return;
  state.busy = state.busy.then(() => render(msg.args)).catch((e) => showError("CT viewer: " + e));
});
// Screen readers announce the host page's iframe by its title, which Streamlit sets to the component's module
// path; name it for people. The frame is same-origin (served by the app), so frameElement is readable.
if (window.frameElement) window.frameElement.title = "CT viewer";
post("streamlit:componentReady", { apiVersion: 1 });
setHeight();

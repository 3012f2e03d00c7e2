// The retrieval explorer: plain browser JavaScript, no build step, no requests outside this
// server. It calls the public REST API only:
//   GET  /v1/models/<model>/metadata        -> K (groups) from the output signature
//   GET  /v1/gallery/<model>?limit=24        -> sample gallery items (ids, labels)
//   GET  /v1/gallery/<model>/item?id=<id>    -> a gallery item's image ({"b64": ...})
//   POST /v1/models/<model>:predict          -> neighbours, scores, group_scores, attention
// Attention overlays are drawn here from the per-group maps the API returns: the query's come
// with its search, each neighbour's from one more :predict of the neighbour images (k=1,
// return_attention) on the same model version.
// State for tests and assistive tech: <body data-state="idle|loading|ready|error">, and
// #results[data-attention="pending|ready|unavailable"][data-group][data-query].
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
                   "#f032e6", "#9a6324", "#469990", "#800000", "#000075", "#808000"];
  const MAX_UPLOAD_BYTES = 64 * 1024 * 1024;  // beyond any sane body limit: refused locally
  const OVERLAY_SIZE = 256;

  const state = {
    model: "",
    version: null,        // the version the metadata answered; every later call pins it
    numGroups: 0,
    enabled: new Set(),
    imagesAvailable: false,
    query: null,          // {blob, name}
    queryMaps: null,
    neighbours: [],       // [{id, maps}]
    seq: 0,
  };

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function groupColour(g) {
    if (g < PALETTE.length) return PALETTE[g];
    return `hsl(${Math.round((g * 137.508) % 360)}, 75%, 45%)`;
  }

  function colourRgb(colour) {
    // The browser parses any CSS colour; read it back as RGB from a 1x1 canvas.
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 1;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = colour;
    ctx.fillRect(0, 0, 1, 1);
    const d = ctx.getImageData(0, 0, 1, 1).data;
    return [d[0], d[1], d[2]];
  }

  function modelPath() {
    const name = encodeURIComponent(state.model);
    return state.version === null ? name : `${name}/versions/${encodeURIComponent(state.version)}`;
  }

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: body === undefined ? {} : {"Content-Type": "application/json"},
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(`Cannot reach the server (${error.message}).`, null, null);
    }
    const text = await response.text();
    let doc = null;
    try { doc = JSON.parse(text); } catch (_) { doc = null; }
    if (!response.ok) {
      const message = doc && typeof doc.error === "string" ? doc.error : `HTTP ${response.status}`;
      throw new ApiError(message, response.status, doc === null ? text : doc);
    }
    if (doc === null) throw new ApiError("The server's answer is not JSON.", response.status, text);
    return doc;
  }

  function setPageState(name, message) {
    document.body.dataset.state = name;
    const status = $("status");
    status.textContent = message || "";
    status.classList.toggle("loading", name === "loading");
  }

  function showError(error) {
    const box = $("error");
    const refused = error.status !== null && error.status >= 400 && error.status < 500;
    box.querySelector("h2").textContent = refused ? "The server refused the request"
                                                  : "The request failed";
    $("error-text").textContent = error.status === null ? error.message
                                                        : `HTTP ${error.status}: ${error.message}`;
    const body = error.body;
    $("error-json").textContent = body === null || body === undefined ? "(no answer)"
      : typeof body === "string" ? body : JSON.stringify(body, null, 2);
    box.hidden = false;
    setPageState("error", "");
    if (window.matchMedia("(max-width: 899px)").matches) box.scrollIntoView({block: "start"});
  }

  function hideError() { $("error").hidden = true; }

  function blobToBase64(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = reader.result;
        resolve(url.slice(url.indexOf(",") + 1));
      };
      reader.onerror = () => reject(new ApiError("Cannot read the file.", null, null));
      reader.readAsDataURL(blob);
    });
  }

  // ------------------------------------------------------------ model and gallery

  async function loadModel() {
    state.model = $("model").value.trim();
    state.version = null;
    state.numGroups = 0;
    setPageState("loading", `Reading ${state.model}'s signature…`);
    hideError();
    const meta = await api("GET", `/v1/models/${encodeURIComponent(state.model)}/metadata`);
    state.version = meta.model_spec.version;
    const signature = meta.metadata.signature_def.signature_def.serving_default;
    const outputs = signature ? signature.outputs : {};
    if (!outputs.group_scores || !outputs.attention) {
      throw new ApiError(`${state.model} is not a retrieval model with attention maps ` +
                         "(its serving_default lacks group_scores/attention).", null, meta);
    }
    state.numGroups = Number(outputs.group_scores.tensor_shape.dim[2].size);
    buildGroupControls();
    setPageState("idle", `Model ${state.model} version ${state.version}: ` +
                 `${state.numGroups} attention groups. Choose a query image.`);
  }

  function buildGroupControls() {
    const select = $("group");
    const chosen = select.value;
    select.replaceChildren(new Option("the whole embedding", ""));
    for (let g = 0; g < state.numGroups; g++) select.add(new Option(`group ${g + 1} only`, String(g)));
    if (chosen !== "" && Number(chosen) < state.numGroups) select.value = chosen;
    state.enabled = new Set([...Array(state.numGroups).keys()]);
    const items = $("legend-items");
    items.replaceChildren();
    for (let g = 0; g < state.numGroups; g++) {
      const label = document.createElement("label");
      label.className = "legend-item";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.dataset.group = String(g);
      box.addEventListener("change", () => {
        if (box.checked) state.enabled.add(g); else state.enabled.delete(g);
        redrawOverlays();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = groupColour(g);
      label.append(box, swatch, document.createTextNode(` group ${g + 1}`));
      items.append(label);
    }
  }

  async function loadGallery() {
    const list = $("gallery");
    const note = $("gallery-state");
    list.replaceChildren();
    note.textContent = "Loading sample items…";
    let doc;
    try {
      doc = await api("GET", `/v1/gallery/${modelPath()}?limit=24`);
    } catch (error) {
      state.imagesAvailable = false;
      note.textContent = `No gallery samples: ${error.message}`;
      return;
    }
    state.imagesAvailable = Boolean(doc.images_available);
    if (!doc.items.length) {
      note.textContent = `The gallery (${doc.num_items} items) has no images to show` +
        (doc.reason ? `: ${doc.reason}.` : ".") + " Upload a query image instead.";
      return;
    }
    note.textContent = `${doc.items.length} of ${doc.num_items} gallery items:`;
    for (const item of doc.items) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-label", `Use gallery item ${item.id} (label ${item.label}) as the query`);
      const img = document.createElement("img");
      img.alt = "";
      const caption = document.createElement("span");
      caption.textContent = `label ${item.label}`;
      button.append(img, caption);
      button.addEventListener("click", () => useGalleryItem(item));
      li.append(button);
      list.append(li);
      fetchItem(item.id).then((got) => { img.src = got.dataUrl; }).catch(() => {
        caption.textContent = `label ${item.label} (no image)`;
      });
    }
  }

  async function fetchItem(id) {
    const doc = await api("GET", `/v1/gallery/${modelPath()}/item?id=${encodeURIComponent(id)}`);
    const b64 = doc.image_bytes.b64;
    return {b64, contentType: doc.content_type, dataUrl: `data:${doc.content_type};base64,${b64}`};
  }

  function base64ToBlob(b64, contentType) {
    const bytes = atob(b64);
    const array = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) array[i] = bytes.charCodeAt(i);
    return new Blob([array], {type: contentType});
  }

  async function useGalleryItem(item) {
    try {
      const got = await fetchItem(item.id);
      await runQuery({blob: base64ToBlob(got.b64, got.contentType), name: `gallery item ${item.id}`});
    } catch (error) {
      showError(error instanceof ApiError ? error : new ApiError(String(error), null, null));
    }
  }

  // ------------------------------------------------------------ queries

  function readOptions() {
    const k = Number($("k").value);
    if (!Number.isInteger(k) || k < 1) {
      throw new ApiError("k must be a whole number of at least 1.", null, null);
    }
    const group = $("group").value;
    return {k, group: group === "" ? null : Number(group)};
  }

  async function runQuery(query) {
    const seq = ++state.seq;
    hideError();
    if (query.blob.size > MAX_UPLOAD_BYTES) {
      showError(new ApiError(`The file is ${query.blob.size} bytes; send an image under ` +
                             `${MAX_UPLOAD_BYTES} bytes.`, null, null));
      return;
    }
    state.query = query;
    const options = readOptions();
    const how = options.group === null ? "the whole embedding" : `group ${options.group + 1}`;
    setPageState("loading", `Searching ${state.model} for ${query.name} by ${how}…`);
    const b64 = await blobToBase64(query.blob);
    const body = {instances: [{b64}], k: options.k, return_attention: true};
    if (options.group !== null) body.group = options.group;
    const doc = await api("POST", `/v1/models/${modelPath()}:predict`, body);
    if (seq !== state.seq) return;  // a newer query replaced this one
    const row = doc.predictions[0];
    showQuery(query, row.attention);
    renderResults(row, options);
    setPageState("ready", `${row.ids.length} neighbours of ${query.name}, searched by ${how}.`);
    // One column (phones): the answer sits below the controls, so bring it into view.
    if (window.matchMedia("(max-width: 899px)").matches) $("status").scrollIntoView({block: "start"});
    await loadNeighbourAttention(row.ids, seq);
  }

  function showQuery(query, maps) {
    $("query-panel").hidden = false;
    const img = $("query-image");
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    img.dataset.url = URL.createObjectURL(query.blob);
    img.src = img.dataset.url;
    img.alt = `The query: ${query.name}`;
    state.queryMaps = maps;
    drawOverlay($("query-overlay"), maps);
  }

  function renderResults(row, options) {
    const list = $("results");
    list.replaceChildren();
    list.dataset.attention = "pending";
    list.dataset.query = state.query ? state.query.name : "";
    list.dataset.group = options.group === null ? "all" : String(options.group);
    $("results-title").hidden = false;
    $("results-help").hidden = false;
    state.neighbours = row.ids.map((id) => ({id, maps: null}));
    // Bars span the range of the per-group cosines shown (trained embeddings often sit in a
    // narrow band near 1), so differences between groups stay visible; the numbers are exact.
    const all = row.group_scores.flat();
    const top = Math.max(...all);
    const low = Math.min(...all) - 0.15 * Math.max(top - Math.min(...all), 1e-6);
    const width = (s) => (top > low ? Math.max(0, (s - low) / (top - low)) : 1);
    row.ids.forEach((id, r) => {
      const li = document.createElement("li");
      li.className = "result card";
      li.dataset.rank = String(r + 1);
      li.dataset.id = id;
      const frame = document.createElement("div");
      frame.className = "frame";
      const canvas = document.createElement("canvas");
      canvas.className = "overlay";
      canvas.setAttribute("aria-hidden", "true");
      frame.append(canvas);
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.innerHTML = '<span class="rank"></span><span class="score"></span><span class="label"></span>';
      meta.querySelector(".rank").textContent = `#${r + 1}`;
      const score = meta.querySelector(".score");
      score.textContent = `score ${row.scores[r].toFixed(3)}`;
      score.title = "cosine similarity of the searched embedding";
      meta.querySelector(".label").textContent = `label ${row.labels[r]}`;
      const idLine = document.createElement("div");
      idLine.className = "item-id";
      idLine.textContent = id;
      const bars = document.createElement("ul");
      bars.className = "bars";
      bars.setAttribute("aria-label", "Cosine similarity per group");
      row.group_scores[r].forEach((s, g) => {
        const bar = document.createElement("li");
        bar.dataset.group = String(g);
        bar.dataset.score = String(s);
        if (g === options.group) bar.classList.add("searched");
        const name = document.createElement("span");
        name.textContent = `g${g + 1}`;
        const track = document.createElement("span");
        track.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = `${(width(s) * 100).toFixed(1)}%`;
        fill.style.background = groupColour(g);
        track.append(fill);
        const value = document.createElement("span");
        value.textContent = s.toFixed(3);
        bar.append(name, track, value);
        bar.title = `group ${g + 1}: cosine ${s.toFixed(3)}${g === options.group ? " (searched)" : ""}`;
        bars.append(bar);
      });
      li.append(frame, meta, idLine, bars);
      list.append(li);
    });
  }

  async function loadNeighbourAttention(ids, seq) {
    const list = $("results");
    const cards = [...list.children];
    if (!state.imagesAvailable) {
      cards.forEach((card) => placeholder(card, "no image: the gallery serves no images"));
      list.dataset.attention = "unavailable";
      return;
    }
    const items = await Promise.all(ids.map((id) => fetchItem(id).catch(() => null)));
    if (seq !== state.seq) return;
    items.forEach((item, r) => {
      if (item === null) { placeholder(cards[r], "image not available"); return; }
      const img = document.createElement("img");
      img.src = item.dataUrl;
      img.alt = `Neighbour ${r + 1}: ${ids[r]}`;
      cards[r].querySelector(".frame").prepend(img);
    });
    const present = items.map((item, r) => [item, r]).filter(([item]) => item !== null);
    if (!present.length) { list.dataset.attention = "unavailable"; return; }
    const instances = present.map(([item]) => ({b64: item.b64}));
    let doc;
    try {
      doc = await api("POST", `/v1/models/${modelPath()}:predict`,
                      {instances, k: 1, return_attention: true});
    } catch (error) {
      if (seq === state.seq) { list.dataset.attention = "unavailable"; showError(error); }
      return;
    }
    if (seq !== state.seq) return;
    present.forEach(([, r], i) => {
      state.neighbours[r].maps = doc.predictions[i].attention;
      drawOverlay(cards[r].querySelector("canvas"), state.neighbours[r].maps);
    });
    list.dataset.attention = "ready";
  }

  function placeholder(card, text) {
    const note = document.createElement("div");
    note.className = "no-image";
    note.textContent = text;
    card.querySelector(".frame").prepend(note);
  }

  // ------------------------------------------------------------ overlays

  function drawOverlay(canvas, maps) {
    canvas.width = canvas.height = OVERLAY_SIZE;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, OVERLAY_SIZE, OVERLAY_SIZE);
    ctx.imageSmoothingEnabled = true;
    const drawn = [];
    maps.forEach((map, g) => {
      if (!state.enabled.has(g)) return;
      const h = map.length;
      const w = map[0].length;
      let max = -Infinity;
      let sum = 0;
      for (const line of map) for (const v of line) { max = Math.max(max, v); sum += v; }
      const mean = sum / (h * w);
      const small = document.createElement("canvas");
      small.width = w;
      small.height = h;
      const sctx = small.getContext("2d");
      const pixels = sctx.createImageData(w, h);
      const [r, gr, b] = colourRgb(groupColour(g));
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const i = 4 * (y * w + x);
          // Shaded where the group attends more than its average, scaled to its own peak:
          // where this group looks, whatever its temperature.
          const a = max > mean ? Math.max(0, map[y][x] - mean) / (max - mean) : 0;
          pixels.data[i] = r; pixels.data[i + 1] = gr; pixels.data[i + 2] = b;
          pixels.data[i + 3] = Math.round(160 * a);
        }
      }
      sctx.putImageData(pixels, 0, 0);
      ctx.drawImage(small, 0, 0, OVERLAY_SIZE, OVERLAY_SIZE);
      drawn.push(g);
    });
    canvas.dataset.groups = drawn.join(",");
    canvas.dataset.maps = JSON.stringify(maps);  // what the overlay was drawn from (tests, a11y tools)
  }

  function redrawOverlays() {
    if (state.queryMaps) drawOverlay($("query-overlay"), state.queryMaps);
    const cards = [...$("results").children];
    state.neighbours.forEach((n, r) => {
      if (n.maps && cards[r]) drawOverlay(cards[r].querySelector("canvas"), n.maps);
    });
  }

  // ------------------------------------------------------------ wiring

  async function guarded(fn) {
    try { await fn(); } catch (error) {
      showError(error instanceof ApiError ? error : new ApiError(String(error), null, null));
    }
  }

  function rerun() {
    if (state.query) guarded(() => runQuery(state.query));
  }

  async function start() {
    const fromUrl = new URLSearchParams(window.location.search).get("model");
    if (fromUrl) $("model").value = fromUrl;
    await guarded(loadModel);
    await loadGallery();
  }

  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) guarded(() => runQuery({blob: file, name: file.name}));
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) guarded(() => runQuery({blob: file, name: file.name}));
  });
  $("group").addEventListener("change", rerun);
  $("k").addEventListener("change", rerun);
  $("model").addEventListener("change", () => guarded(async () => {
    state.query = null;
    $("results").replaceChildren();
    $("query-panel").hidden = true;
    await loadModel();
    await loadGallery();
  }));
  $("query-form").addEventListener("submit", (event) => { event.preventDefault(); rerun(); });
  document.body.dataset.state = "idle";
  start();
})();

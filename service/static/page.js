// The FaceSR page: sends the upload to the service's own endpoints and shows what comes back.
// A face crop: /superresolve (before/after slider), /samples (grid) and /traverse?format=gif.
// A whole photo: /photo?format=json (boxes and crops), then /photo (before/after slider).
"use strict";

const $ = (id) => document.getElementById(id);
const objectUrls = [];  // blob: URLs of the last run, released before the next

class ServiceError extends Error {}

// ---- calling the service --------------------------------------------------------------------

async function post(path, params, files) {
  const body = new FormData();
  for (const [name, file] of Object.entries(files)) if (file) body.append(name, file);
  const query = new URLSearchParams(
    Object.entries(params).filter(([, value]) => value !== "" && value !== undefined));
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(`${path}?${query}`, { method: "POST", body, headers });
  if (!response.ok) throw new ServiceError(await errorMessage(path, response));
  return response;
}

// The service answers every error with {"error": kind, "detail": what to do}.
async function errorMessage(path, response) {
  const text = await response.text();
  try {
    const { error, detail } = JSON.parse(text);
    if (error) return `${path}: ${error} (HTTP ${response.status}): ${detail}`;
  } catch { /* not the service's JSON: a proxy's page, say */ }
  return `${path}: HTTP ${response.status} ${response.statusText}`;
}

async function blobUrl(response) {
  const url = URL.createObjectURL(await response.blob());
  objectUrls.push(url);
  return url;
}

const png64 = (data) => `data:image/png;base64,${data}`;

// ---- bicubic, as the service and the training data compute it (Pillow's BICUBIC) ------------

function cubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Per output index: the first input index and the normalised weights (Pillow's coefficients).
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  return Array.from({ length: outSize }, (_, i) => {
    const center = (i + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const end = Math.min(Math.trunc(center + support + 0.5), inSize);
    const weights = [];
    for (let x = first; x < end; x++) weights.push(cubic((x - center + 0.5) / filterScale));
    const sum = weights.reduce((s, w) => s + w, 0);
    return { first, weights: weights.map((w) => w / sum) };
  });
}

// One separable pass over RGBA pixels along x (horizontal) or y, rounded to 8 bits like Pillow.
function resamplePass(src, width, height, outSize, horizontal) {
  const [outW, outH] = horizontal ? [outSize, height] : [width, outSize];
  const out = new Uint8ClampedArray(outW * outH * 4);
  const coeffs = coefficients(horizontal ? width : height, outSize);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const { first, weights } = coeffs[horizontal ? x : y];
      for (let c = 0; c < 4; c++) {
        let sum = 0;
        for (let k = 0; k < weights.length; k++) {
          const at = horizontal ? (y * width + first + k) : ((first + k) * width + x);
          sum += weights[k] * src[at * 4 + c];
        }
        out[(y * outW + x) * 4 + c] = Math.round(sum);
      }
    }
  }
  return out;
}

function bicubic(imageData, outW, outH) {
  const { width, height, data } = imageData;
  const wide = resamplePass(data, width, height, outW, true);
  return new ImageData(resamplePass(wide, outW, height, outH, false), outW, outH);
}

// ---- images in the browser ------------------------------------------------------------------

async function pixelsOf(file) {
  const bitmap = await createImageBitmap(file);  // EXIF orientation applied, as the service does
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";  // transparency on white, as the service does
  ctx.fillRect(0, 0, bitmap.width, bitmap.height);
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

// The service's input rules: a centre square, resized to the model's input side if needed.
function centreSquare(imageData) {
  const { width, height } = imageData;
  const side = Math.min(width, height);
  const left = Math.floor((width - side) / 2);
  const top = Math.floor((height - side) / 2);
  const out = new ImageData(side, side);
  for (let y = 0; y < side; y++) {
    const start = ((top + y) * width + left) * 4;
    out.data.set(imageData.data.subarray(start, start + side * 4), y * side * 4);
  }
  return out;
}

function draw(canvas, imageData) {
  canvas.width = imageData.width;
  canvas.height = imageData.height;
  canvas.getContext("2d").putImageData(imageData, 0, 0);
}

function figure(images, caption, best = false) {
  const fig = document.createElement("figure");
  if (best) fig.className = "best";
  for (const [src, alt] of images) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    fig.append(img);
  }
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(cap);
  return fig;
}

// ---- the two modes --------------------------------------------------------------------------

async function showComparison(bicubicPixels, srUrl, caption, isPhoto) {
  draw($("before"), bicubicPixels);
  $("compare").classList.toggle("photo", isPhoto);
  // a face enlarged 3x (pixelated, by the style sheet); a photo at its size, or the page's width
  $("viewer").style.width = isPhoto ? `min(100%, ${bicubicPixels.width}px)` : "";
  const after = $("after");
  const loaded = new Promise((resolve, reject) => {
    after.onload = resolve;
    after.onerror = () => reject(new Error("the browser could not show the result image"));
  });
  after.src = srUrl;
  await loaded;
  $("compare-caption").textContent = caption;
  $("compare-section").hidden = false;
}

async function runFace(file, pixels) {
  const scale = $("scale").value;
  const reference = $("reference").files[0];
  status("super-resolving…");
  const sr = await post("/superresolve", { scale }, { image: file });
  const used = Number(sr.headers.get("X-FaceSR-Scale"));
  let lr = centreSquare(pixels);
  if (lr.width !== 128 / used) lr = bicubic(lr, 128 / used, 128 / used);
  await showComparison(bicubic(lr, 128, 128), await blobUrl(sr),
    `left: bicubic, right: FaceSR x${used}, the ICAP mean (model ` +
    `${sr.headers.get("X-FaceSR-Model")} ${sr.headers.get("X-FaceSR-Version")}); drag the slider`,
    false);

  status("sampling…");
  const answer = await post("/samples",
    { scale, n: $("n").value, seed: $("seed").value, temperature: $("temperature").value,
      draws: $("draws").value },
    { image: file, reference });
  const seed = answer.headers.get("X-FaceSR-Seed");  // a string: seeds go up to 2^63 - 1
  const samples = await answer.json();
  $("samples").replaceChildren(...samples.samples.map((entry) => {
    const name = entry.kind === "mean" ? "ICAP mean" : `draw ${entry.draw}`;
    const psnr = entry.psnr === null ? "" : `, ${entry.psnr.toFixed(2)} dB`;
    return figure([[png64(entry.image), name]], name + psnr + (entry.best ? " (best)" : ""),
      entry.best);
  }));
  $("samples-summary").textContent = `seed ${seed}, ${samples.draws} draws, temperature ` +
    `${samples.temperature.toFixed(2)}` + (samples.reference
      ? "; PSNR against the reference, the best sample framed in green" : "");
  $("samples-section").hidden = false;

  status("traversing…");
  const walk = await post("/traverse",
    { scale, format: "gif", steps: $("steps").value, seed,
      temperature: $("temperature").value, draws: $("draws").value }, { image: file });
  $("traverse").src = await blobUrl(walk);
  $("traverse-caption").textContent =
    `from draw 0 to draw 1 of seed ${seed}, ${$("steps").value} frames`;
  $("traverse-section").hidden = false;
}

const BOX_COLOURS = { done: "#1fd14b", skipped: "#ff9f1a" };

// The photo enlarged (nearest neighbour) to about 900 px wide, so that small faces' boxes show.
function drawBoxes(pixels, faces) {
  const zoom = Math.max(1, Math.floor(900 / pixels.width));
  const source = document.createElement("canvas");
  draw(source, pixels);
  const canvas = $("boxes");
  canvas.width = pixels.width * zoom;
  canvas.height = pixels.height * zoom;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2;
  ctx.font = "bold 13px sans-serif";
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box.map((v) => v * zoom);
    ctx.strokeStyle = ctx.fillStyle = face.scale ? BOX_COLOURS.done : BOX_COLOURS.skipped;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillText(face.scale ? `x${face.scale}` : "bicubic", x0 + 2, y1 - 4);
  }
}

async function runPhoto(file, pixels) {
  const scale = $("scale").value;
  status("finding faces…");
  const found = await (await post("/photo", { scale, format: "json" }, { image: file })).json();
  drawBoxes(pixels, found.faces);
  const done = found.faces.filter((face) => face.scale);
  $("faces-summary").textContent = `${found.faces_found} faces found` +
    (found.faces_dropped ? ` (${found.faces_dropped} beyond max_faces)` : "") +
    `, ${done.length} super-resolved (green), ${found.faces.length - done.length} left bicubic` +
    ` (orange); ${found.detector} on a ${found.detect_upscale}x copy`;
  $("faces").replaceChildren(...done.map((face, k) => figure(
    [[png64(face.input), "input"], [png64(face.image), "result"]], `face ${k + 1}: x${face.scale}`)));
  $("boxes-section").hidden = false;

  status("pasting the faces back…");
  const photo = await post("/photo", { scale }, { image: file });
  const up = Number(photo.headers.get("X-FaceSR-Upscale"));
  await showComparison(bicubic(pixels, pixels.width * up, pixels.height * up),
    await blobUrl(photo), `left: bicubic x${up}, right: the faces super-resolved and pasted back`,
    true);
}

// ---- the form -------------------------------------------------------------------------------

function status(text) { $("status").textContent = text; }

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function reset() {
  showError("");
  status("working…");
  for (const id of ["compare-section", "boxes-section", "samples-section", "traverse-section"]) {
    $(id).hidden = true;
  }
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
}

async function run(event) {
  event.preventDefault();
  const file = $("image").files[0];
  if (!file) return;
  reset();
  $("run").disabled = true;
  const started = performance.now();
  try {
    const pixels = await pixelsOf(file);
    await (mode() === "photo" ? runPhoto : runFace)(file, pixels);
    status(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } catch (err) {
    status("");
    showError(err instanceof ServiceError ? err.message
      : `could not process ${file.name}: ${err.message}`);
  } finally {
    $("run").disabled = false;
  }
}

// A small square image is a face crop; anything else a photo (the choice stays editable).
async function guessMode() {
  const input = $("image");
  delete input.dataset.guessed;
  const file = input.files[0];
  if (!file) return;
  try {
    const { width, height } = await createImageBitmap(file);
    const face = Math.max(width, height) <= 40 && Math.abs(width - height) <= 2;
    document.querySelector(`input[name=mode][value=${face ? "face" : "photo"}]`).checked = true;
    showMode();
  } catch { /* not an image the browser reads: the service will say why */ }
  input.dataset.guessed = "yes";  // for a test that overrides the guess: it has happened
}

function showMode() { $("face-options").hidden = mode() !== "face"; }

$("form").addEventListener("submit", run);
$("image").addEventListener("change", guessMode);
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", showMode);
}
$("split").addEventListener("input", (e) => {
  $("compare").style.setProperty("--split", `${e.target.value}%`);
});
$("compare").style.setProperty("--split", "50%");

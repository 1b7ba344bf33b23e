// The page's behaviour: tabs, API calls (with the API key when one is asked for), and each view.
"use strict";

const KEY_HEADER = document.body.dataset.keyHeader;
const KEY_STORE = "verifier.apiKey";
const $ = id => document.getElementById(id);
let calibration = null;  // /v1/calibration of the chosen modality, once loaded
let retry = null;        // the action to repeat once a key is given

// -- messages and keys ---------------------------------------------------------------------

function showError(message) {
  $("alert").textContent = message;
}

function clearError() {
  $("alert").textContent = "";
  $("status").textContent = "";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch `path` with the key, if any; the response, or an ApiError carrying the API's own message.
async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.set(KEY_HEADER, key);
  const response = await fetch(path, {...options, headers});
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = body && body.error ? body.error : {code: "http_error", message: `HTTP ${response.status}`};
    throw new ApiError(response.status, error.code, error.message);
  }
  return response;
}

// As `call`, with the JSON body back.
async function api(path, options = {}) {
  const response = await call(path, options);
  return response.json().catch(() => null);
}

// Run a form's action; show any API error in the alert region, and ask for a key on a 401.
async function run(action) {
  clearError();
  try {
    await action();
  } catch (error) {
    showError(error.message);
    if (error.status === 401) askForKey(action);
  }
}

function askForKey(action) {
  retry = action;
  $("key-form").hidden = false;
  $("key-input").focus();
}

$("key-form").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key-input").value.trim());
  $("key-input").value = "";
  $("key-form").hidden = true;
  if (retry) run(retry);
});

$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  $("key-form").hidden = true;
});

function onSubmit(id, action) {
  $(id).addEventListener("submit", event => {
    event.preventDefault();
    run(() => action(event.target));
  });
}

// -- modality: every request names the chosen one ----------------------------------------------

const modality = () => $("modality").value;

// `path` with ?modality= (or &modality=) when one is chosen.
function withModality(path) {
  if (!modality()) return path;
  return `${path}${path.includes("?") ? "&" : "?"}modality=${encodeURIComponent(modality())}`;
}

// FormData with the chosen modality added.
function withModalityField(data) {
  if (modality()) data.set("modality", modality());
  return data;
}

async function loadModalities() {
  const served = await api("/v1/modalities");
  $("modality").replaceChildren(...served.modalities.map(m => {
    const words = m.ready ? `${m.modality} (${m.profile}${m.threshold == null ? ", not calibrated" : ""})`
                          : `${m.modality} (not loaded: ${m.error})`;
    return new Option(m.default ? `${words}, default` : words, m.modality, m.default, m.default);
  }));
}

$("modality").addEventListener("change", () => run(async () => {
  calibration = null;
  await loadCalibration();
  if (!$("view-calibration").hidden) await showCalibration();
  if (!$("view-subjects").hidden) await listSubjects();
}));

// -- tabs ----------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectTab(tab) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  tab.focus();
  if (tab.id === "tab-calibration") run(showCalibration);
  if (tab.id === "tab-subjects") run(listSubjects);
}

tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", event => {
    const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
    if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length]);
    if (event.key === "Home") selectTab(tabs[0]);
    if (event.key === "End") selectTab(tabs[tabs.length - 1]);
  });
});

// -- words ---------------------------------------------------------------------------------

function percent(p) {
  if (p > 0.9999) return "over 99.99%";
  if (p > 0 && p < 0.0001) return "under 0.01%";
  return `${(100 * p).toFixed(p > 0.999 || p < 0.001 ? 2 : 1)}%`;
}

function decisionWords(decision) {
  const faces = calibration && calibration.profile.startsWith("face");
  if (decision === "same") return faces ? "same person" : "same identity";
  return faces ? "different people" : "different identities";
}

function confidenceWords(result) {
  const prior = calibration ? ` under the calibration's prior of ${percent(calibration.prior)}` : "";
  const p = result.decision === "same" ? result.confidence : 1 - result.confidence;
  return `${decisionWords(result.decision)}, ${percent(p)}${prior} (P(same) = ${result.confidence.toFixed(4)})`;
}

function policyWords(result) {
  return `threshold ${result.threshold.toFixed(4)} set by ${result.policy}; modality ${result.modality}, bundle ${result.model}, ` +
    `calibration ${result.calibration_id}, profile ${result.profile}`;
}

// -- verify --------------------------------------------------------------------------------

const images = {};  // side -> HTMLImageElement of the picked file

function drawPreview(side, face) {
  const canvas = $(`preview-${side}`), context = canvas.getContext("2d"), image = images[side];
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!image) return;
  const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
  const dx = (canvas.width - image.width * scale) / 2, dy = (canvas.height - image.height * scale) / 2;
  context.drawImage(image, dx, dy, image.width * scale, image.height * scale);
  if (face && face.box) {
    const [x0, y0, x1, y1] = face.box;
    context.strokeStyle = "#e4007c";
    context.lineWidth = 2;
    context.strokeRect(dx + x0 * scale, dy + y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale);
  }
}

function loadPreview(side, file) {
  delete images[side];
  drawPreview(side);
  if (!file) return;
  const image = new Image();
  image.onload = () => { images[side] = image; drawPreview(side); };
  image.src = URL.createObjectURL(file);
}

for (const side of ["a", "b"]) {
  const input = $(`image-${side}`), zone = input.closest(".drop");
  input.addEventListener("change", () => loadPreview(side, input.files[0]));
  zone.addEventListener("dragover", event => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", event => {
    event.preventDefault();
    zone.classList.remove("over");
    input.files = event.dataTransfer.files;
    loadPreview(side, input.files[0]);
  });
}

// -- camera, where the browser offers one --------------------------------------------------

let cameraSide = null;

async function openCamera(side) {
  cameraSide = side;
  $("camera-video").srcObject = await navigator.mediaDevices.getUserMedia({video: true});
  $("camera").hidden = false;
  $("camera-take").focus();
}

function closeCamera() {
  const video = $("camera-video");
  if (video.srcObject) video.srcObject.getTracks().forEach(track => track.stop());
  video.srcObject = null;
  $("camera").hidden = true;
}

if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  document.querySelectorAll(".camera").forEach(button => {
    button.hidden = false;
    button.addEventListener("click", () => run(() => openCamera(button.dataset.side)));
  });
}

$("camera-close").addEventListener("click", closeCamera);

// The current frame becomes the side's file, as if it had been picked.
$("camera-take").addEventListener("click", () => {
  const video = $("camera-video"), canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob(blob => {
    const picked = new DataTransfer();
    picked.items.add(new File([blob], `camera-${cameraSide}.png`, {type: "image/png"}));
    $(`image-${cameraSide}`).files = picked.files;
    loadPreview(cameraSide, picked.files[0]);
    closeCamera();
  }, "image/png");
});

onSubmit("verify-form", async form => {
  const data = withModalityField(new FormData(form));
  if (!data.get("target_fmr")) data.delete("target_fmr");
  const result = await api("/v1/verify", {method: "POST", body: data});
  $("verify-result").hidden = false;
  $("verify-decision").textContent = decisionWords(result.decision);
  $("verify-decision").dataset.decision = result.decision;
  $("verify-confidence").textContent = confidenceWords(result);
  $("verify-distance").textContent = `distance ${result.distance.toFixed(4)} (same when at most the threshold)`;
  Charts.scale($("verify-scale"), result.distance, result.threshold,
               Math.max(2 * result.threshold, 1.1 * result.distance, 1e-6));
  $("verify-policy").textContent = policyWords(result);
  const faces = result.faces || [];
  drawPreview("a", faces[0]);
  drawPreview("b", faces[1]);
});

// -- subjects ------------------------------------------------------------------------------

function jsonPost(path, payload) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)});
}

const subjectPath = id => `/v1/subjects/${encodeURIComponent(id.trim())}`;

// A box that fills with the subject's thumbnail (fetched with the key, shown from a blob), or says why not.
function thumbnail(id) {
  const box = document.createElement("div");
  box.className = "thumbnail";
  box.textContent = "loading…";
  call(`${subjectPath(id)}/thumbnail`).then(response => response.blob()).then(blob => {
    const image = new Image();
    image.alt = `${id}: an enrolled image`;
    image.onload = () => URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(blob);
    box.replaceChildren(image);
  }, error => {
    box.classList.add("none");
    box.textContent = error.code === "no_image" ? "no image kept" : error.message;
    box.title = error.message;
  });
  return box;
}

async function listSubjects() {
  const page = await api(withModality("/v1/subjects?limit=100"));
  const rows = page.subjects.map(subject => {
    const row = document.createElement("tr"), picture = document.createElement("td");
    picture.append(thumbnail(subject.id));
    row.append(picture);
    for (const text of [subject.id, subject.modality, `${subject.template_count}`, subject.created]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $("subjects-table").tBodies[0].replaceChildren(...rows);
  $("subject-ids").replaceChildren(...page.subjects.map(s => new Option(s.id)));
}

$("subjects-refresh").addEventListener("click", () => run(listSubjects));

onSubmit("create-form", async form => {
  const text = form.metadata.value.trim();
  let metadata;
  try {
    metadata = text ? JSON.parse(text) : {};
  } catch (error) {
    throw new Error(`metadata is not JSON: ${error.message}`);
  }
  const payload = {id: form.id.value.trim(), metadata};
  if (modality()) payload.modality = modality();
  const subject = await jsonPost("/v1/subjects", payload);
  $("status").textContent = `created ${subject.id} (modality ${subject.modality})`;
  $("enroll-id").value = $("probe-id").value = subject.id;
  await listSubjects();
});

onSubmit("enroll-form", async form => {
  const files = [...form.image.files], data = withModalityField(new FormData());
  files.forEach(file => data.append("image", file));
  $("enroll-result").replaceChildren();
  let result;
  try {
    result = await api(`${subjectPath(form.subject.value)}/templates`, {method: "POST", body: data});
  } catch (error) {
    if (error.code === "failure_to_enrol") showEnrollment(files, {failures: files.map((_, index) => ({index, reason: error.message}))});
    throw error;
  }
  showEnrollment(files, result);
  await listSubjects();
});

function showEnrollment(files, result) {
  const refused = new Map((result.failures || []).map(f => [f.index, f.reason]));
  $("enroll-result").replaceChildren(...files.map((file, index) => {
    const item = document.createElement("li"), image = new Image(), caption = document.createElement("span");
    image.src = URL.createObjectURL(file);
    image.alt = file.name;
    const reason = refused.get(index);
    item.className = reason ? "refused" : "accepted";
    caption.textContent = reason ? `${file.name}: refused (${reason})` : `${file.name}: accepted`;
    item.append(image, caption);
    return item;
  }));
}

onSubmit("probe-form", async form => {
  const data = withModalityField(new FormData());
  data.append("image", form.image.files[0]);
  const result = await api(`${subjectPath(form.subject.value)}/verify`, {method: "POST", body: data});
  $("probe-result").hidden = false;
  $("probe-decision").textContent = `${result.subject_id}: ${decisionWords(result.decision)}`;
  $("probe-decision").dataset.decision = result.decision;
  $("probe-confidence").textContent = `${confidenceWords(result)}; distance ${result.distance.toFixed(4)}`;
  $("probe-policy").textContent = `${policyWords(result)}; fusion ${result.fusion.rule} of ${result.fusion.templates} templates`;
});

onSubmit("delete-form", async form => {
  const answer = await api(subjectPath(form.subject.value), {method: "DELETE"});
  $("status").textContent = `deleted ${answer.id}`;
  await listSubjects();
});

// -- identify ------------------------------------------------------------------------------

onSubmit("identify-form", async form => {
  const data = withModalityField(new FormData(form));
  const result = await api("/v1/identify", {method: "POST", body: data});
  $("identify-query").src = URL.createObjectURL(form.image.files[0]);
  $("identify-result").hidden = false;
  $("identify-decision").textContent = result.match ? `match: ${result.match}` : "no match";
  $("identify-decision").dataset.decision = result.decision;
  $("identify-candidates").replaceChildren(...result.candidates.map(candidate => {
    const item = document.createElement("li");
    item.className = candidate.decision;
    const lines = [[candidate.subject_id, "strong"], [`distance ${candidate.distance.toFixed(4)}`],
                   [`P(same) ${percent(candidate.confidence)}`],
                   [`${decisionWords(candidate.decision)} (${candidate.templates} templates)`]];
    item.append(thumbnail(candidate.subject_id), ...lines.map(([text, tag = "span"]) => {
      const line = document.createElement(tag);
      line.textContent = text;
      return line;
    }));
    return item;
  }));
  const gallery = result.gallery ? `; gallery of ${result.gallery.subjects} subjects` : "";
  $("identify-policy").textContent = `${policyWords(result)}${gallery}`;
});

// -- calibration ---------------------------------------------------------------------------

async function loadCalibration() {
  calibration = await api(withModality("/v1/calibration"));
  $("model-line").textContent = `Modality ${calibration.modality}: bundle ${calibration.model} (${calibration.profile}), calibration ` +
    `${calibration.calibration_id}: ${calibration.policy}, threshold ${calibration.threshold.toFixed(4)}`;
  const select = $("target-fmr");
  select.replaceChildren(new Option("the calibration's policy", ""),
                         ...calibration.target_fmrs.map(t => new Option(`FMR at most ${t}`, t)));
}

const fixed = digits => v => v.toFixed(digits);
const DET_TICKS = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95];

async function showCalibration() {
  if (!calibration) await loadCalibration();
  const c = calibration, curve = c.curve, op = c.operating_point;
  const roc = curve.fmr.map((fmr, i) => [fmr, 1 - curve.fnmr[i]]);
  const unit = {min: 0, max: 1, ticks: [0, 0.25, 0.5, 0.75, 1], format: fixed(2)};
  const mark = op.fmr === undefined ? [] : [{x: op.fmr, y: 1 - op.fnmr, label: `operating point: FMR ${percent(op.fmr)}, FNMR ${percent(op.fnmr)}`}];
  Charts.line($("chart-roc"), "ROC curve", {...unit, label: "FMR"}, {...unit, label: "1 − FNMR"},
              [{points: roc, cls: "roc", label: "ROC"}], mark);
  const det = {min: 0.0005, max: 0.99, ticks: DET_TICKS, map: Charts.probit, format: String};
  const clip = v => Math.min(0.99, Math.max(0.0005, v));
  Charts.line($("chart-det"), "DET curve", {...det, label: "FMR"}, {...det, label: "FNMR"},
              [{points: curve.fmr.map((fmr, i) => [clip(fmr), clip(curve.fnmr[i])]), cls: "det", label: "DET"}],
              mark.map(m => ({...m, x: clip(op.fmr), y: clip(op.fnmr)})));
  const h = c.histogram;
  if (h.edges) {
    Charts.histogram($("chart-hist"), "Distance histograms", h.edges,
                     [{values: h.genuine, cls: "genuine", label: "genuine"},
                      {values: h.impostor, cls: "impostor", label: "impostor"}], c.threshold, h.unit);
  }
  const splits = Object.keys(c.reliability);
  Charts.line($("chart-reliability"), "Reliability diagram", {...unit, label: "predicted P(same)"},
              {...unit, label: "observed share genuine"},
              [{points: [[0, 0], [1, 1]], cls: "diagonal", label: "perfect calibration"},
               ...splits.map(split => ({cls: `reliability ${split}`, label: split, legend: true,
                                        points: c.reliability[split].filter(b => b.count > 0)
                                          .map(b => [b.mean_predicted, b.observed])}))], []);
  showFigures(c);
  $("calibration-summary").textContent = `Policy ${c.policy}: threshold ${c.threshold.toFixed(4)}; dev FMR ` +
    `${op.fmr === undefined ? "?" : percent(op.fmr)}, FNMR ${op.fnmr === undefined ? "?" : percent(op.fnmr)}; ` +
    `confidence stated under a prior of ${percent(c.prior)}. target_fmr choices: ${c.target_fmrs.join(", ") || "none"}.`;
  $("calibration-protocol").textContent = c.protocol || "";
}

function interval(figure) {
  return figure && figure.ci ? ` [${percent(figure.ci[0])}, ${percent(figure.ci[1])}]` : "";
}

function showFigures(c) {
  const splits = Object.keys(c.figures);
  const rows = [
    ["identities", f => `${f.identities ?? ""}`],
    ["genuine / impostor comparisons", f => `${f.genuine ?? "?"} / ${f.impostor ?? "?"}`],
    ["FMR at threshold", f => f.fmr ? `${f.fmr.text}${interval(f.fmr)}` : ""],
    ["FNMR at threshold", f => f.fnmr ? `${f.fnmr.text}${interval(f.fnmr)}` : ""],
    ["EER", f => f.eer ? `${percent(f.eer.value)}${interval(f.eer)}` : ""],
    ["AUC", f => f.auc ? `${f.auc.value.toFixed(4)} [${f.auc.ci.map(v => v.toFixed(4)).join(", ")}]` : ""],
    ...["0.01", "0.001"].map(t => [`FNMR at FMR=${t}`, f => {
      const at = (f.fnmr_at_fmr || {})[t];
      return !at ? "" : at.supported ? `${at.fnmr.text}${interval(at.fnmr)}` : at.text;
    }]),
    ["confidence ECE / Cllr", f => f.confidence ? `${f.confidence.ece.toFixed(4)} / ${f.confidence.cllr.toFixed(4)} bits` : ""],
  ];
  const head = document.createElement("tr");
  for (const text of ["Figure", ...splits]) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.textContent = text;
    head.append(cell);
  }
  $("figures-table").tHead.replaceChildren(head);
  $("figures-table").tBodies[0].replaceChildren(...rows.map(([name, value]) => {
    const row = document.createElement("tr"), th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    row.append(th, ...splits.map(split => {
      const cell = document.createElement("td");
      cell.textContent = value(c.figures[split]);
      return cell;
    }));
    return row;
  }));
}

run(async () => {
  await loadModalities();
  await loadCalibration();
});

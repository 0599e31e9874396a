// The playground: a form that queues txt2img tasks, a poller that shows progress, the live
// preview, the queue and the results. Every call goes to this server's own API with the
// credentials kept in session storage; URLs are relative, so the page works under --subpath.
"use strict";

const API_BASE = new URL(".", document.baseURI);
const AUTH_STORAGE_KEY = "webui-api-credentials";
const POLL_MS = 400;
const PREVIEWS_PER_IMAGE = 10; // show_progress_every_n_steps is set so each image gives about this many
const FINISHED = new Set(["done", "failed", "interrupted", "deleted"]);
const $ = (id) => document.getElementById(id);

const jobs = new Map(); // task id -> {id, prompt, status, error}
let pollTimer = null;
let models = [];
let perJobProgress = true; // until the server shows it has no /internal/progress
let lastPreviewId = -1;

// --- calling the API ---------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function savedCredentials() {
  try { return JSON.parse(sessionStorage.getItem(AUTH_STORAGE_KEY) || "{}"); } catch { return {}; }
}

function authHeaders() {
  const saved = savedCredentials();
  if (saved.key) return { Authorization: `Bearer ${saved.key}` };
  if (saved.user) {
    const bytes = new TextEncoder().encode(`${saved.user}:${saved.password || ""}`);
    return { Authorization: `Basic ${btoa(String.fromCharCode(...bytes))}` };
  }
  return {};
}

async function api(path, { method = "GET", body } = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(new URL(path, API_BASE), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (response.status === 401) showAuth("The server asks for credentials: an API key, or a user name and password.");
  if (!response.ok) throw new HttpError(response.status, errorText(data, response.status));
  return data;
}

function errorText(data, status) {
  if (!data) return `HTTP ${status}`;
  if (Array.isArray(data.detail)) return data.detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  const parts = [data.detail, data.errors].filter((part) => part && typeof part === "string");
  return `${status}: ${parts.join(": ") || data.error || "request failed"}`;
}

function dataUrl(b64) {
  if (b64.startsWith("data:")) return b64;
  const mime = b64.startsWith("/9j/") ? "image/jpeg" : b64.startsWith("UklGR") ? "image/webp" : "image/png";
  return `data:${mime};base64,${b64}`;
}

// --- credentials ---------------------------------------------------------------------------

function showAuth(message) {
  $("auth").hidden = false;
  $("auth-toggle").setAttribute("aria-expanded", "true");
  if (message) $("auth-message").textContent = message;
}

function saveAuth(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const user = $("username").value.trim();
  sessionStorage.setItem(AUTH_STORAGE_KEY, JSON.stringify(key ? { key } : { user, password: $("password").value }));
  $("auth").hidden = true;
  $("auth-toggle").setAttribute("aria-expanded", "false");
  $("form-error").textContent = "";
  loadCatalogs();
}

function clearAuth() {
  sessionStorage.removeItem(AUTH_STORAGE_KEY);
  for (const id of ["api-key", "username", "password"]) $(id).value = "";
}

// --- the form ------------------------------------------------------------------------------

function fillSelect(select, items, wanted) {
  const keep = select.querySelector('option[value=""]');
  select.replaceChildren(...(keep ? [keep] : []));
  for (const { value, label } of items) select.add(new Option(label, value));
  if (wanted !== undefined && items.some((item) => item.value === wanted)) select.value = wanted;
}

async function loadCatalogs() {
  try {
    const [samplers, schedulers, checkpoints, options] = await Promise.all([
      api("sdapi/v1/samplers"), api("sdapi/v1/schedulers"), api("sdapi/v1/sd-models"), api("sdapi/v1/options"),
    ]);
    models = checkpoints;
    fillSelect($("sampler_name"), samplers.map((s) => ({ value: s.name, label: s.name })), "Euler a");
    fillSelect($("scheduler"), schedulers.map((s) => ({ value: s.name, label: s.label })), "automatic");
    fillSelect($("model"), checkpoints.map((m) => ({ value: m.title, label: m.model_name })));
    $("server-note").textContent = `current checkpoint: ${options.sd_model_checkpoint || "?"}`;
  } catch (error) {
    $("form-error").textContent = `Could not read the server's catalogs (${error.message})`;
  }
}

function numberField(id) { return Number($(id).value); }

function formPayload() {
  const steps = numberField("steps");
  const payload = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    sampler_name: $("sampler_name").value || undefined,
    scheduler: $("scheduler").value || undefined,
    steps, cfg_scale: numberField("cfg_scale"),
    width: numberField("width"), height: numberField("height"),
    seed: numberField("seed"), batch_size: numberField("batch_size"), n_iter: numberField("n_iter"),
    override_settings: { show_progress_every_n_steps: Math.max(1, Math.round(steps / PREVIEWS_PER_IMAGE)) },
  };
  if ($("model").value) payload.checkpoint = $("model").value;
  return payload;
}

async function generate(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  const payload = formPayload();
  try {
    const { task_id: id } = await api("agent-scheduler/v1/queue/txt2img", { method: "POST", body: payload });
    jobs.set(id, { id, prompt: payload.prompt, status: "pending", error: null });
    startPolling();
  } catch (error) {
    $("form-error").textContent = error.message;
  }
}

// Infotext fields (as /sdapi/v1/png-info parses them) -> form fields
const PARAMETER_FIELDS = {
  Prompt: "prompt", "Negative prompt": "negative_prompt", Steps: "steps", "CFG scale": "cfg_scale",
  Seed: "seed", "Size-1": "width", "Size-2": "height", Sampler: "sampler_name", "Schedule type": "scheduler",
};

async function sendToForm(image) {
  const status = $("info-status");
  try {
    const { parameters } = await api("sdapi/v1/png-info", { method: "POST", body: { image } });
    for (const [name, id] of Object.entries(PARAMETER_FIELDS)) {
      if (parameters[name] === undefined || parameters[name] === null) continue;
      const value = String(parameters[name]);
      const field = $(id);
      if (field.tagName === "SELECT" && ![...field.options].some((option) => option.value === value)) {
        const byLabel = [...field.options].find((option) => option.textContent === value);
        if (byLabel) field.value = byLabel.value;
      } else {
        field.value = value;
      }
    }
    const model = models.find((m) => m.model_name === parameters.Model || m.hash === parameters["Model hash"]);
    if (model) $("model").value = model.title;
    $("info-dialog").close();
    $("prompt").focus();
  } catch (error) {
    status.textContent = error.message;
  }
}

// --- polling -------------------------------------------------------------------------------

function startPolling() {
  if (pollTimer === null) pollTimer = setTimeout(pollOnce, 0);
}

async function pollOnce() {
  try {
    const queue = await api("agent-scheduler/v1/queue?limit=50");
    renderQueue(queue);
    await updateProgress(queue.current_task_id);
    const pending = new Set(queue.pending_tasks.map((task) => task.id));
    for (const job of jobs.values()) {
      if (FINISHED.has(job.status)) continue;
      if (job.id === queue.current_task_id) job.status = "running";
      else if (pending.has(job.id)) job.status = "pending";
      else await finishJob(job);
    }
  } catch (error) {
    $("form-error").textContent = error.message;
  }
  const active = [...jobs.values()].some((job) => !FINISHED.has(job.status));
  pollTimer = active ? setTimeout(pollOnce, POLL_MS) : null;
  if (!active) await refreshQueue();
}

async function refreshQueue() {
  try { renderQueue(await api("agent-scheduler/v1/queue?limit=50")); } catch { /* shown on the next poll */ }
}

async function updateProgress(currentId) {
  const mine = currentId && jobs.has(currentId);
  if (!mine) {
    if (![...jobs.values()].some((job) => !FINISHED.has(job.status))) setProgress(0, "Idle");
    return;
  }
  const view = perJobProgress ? await jobProgress(currentId) : null;
  if (view === null) await globalProgress();
  else showJobProgress(view);
}

// The task's own progress (POST /internal/progress, A1111's per-job route); null where the
// server lacks it, and from then on the page reads the global /sdapi/v1/progress instead.
async function jobProgress(taskId) {
  try {
    return await api("internal/progress", {
      method: "POST", body: { id_task: taskId, id_live_preview: lastPreviewId, live_preview: true },
    });
  } catch (error) {
    if (error.status !== 404 && error.status !== 405) throw error;
    perJobProgress = false;
    return null;
  }
}

function showJobProgress(view) {
  const eta = view.eta > 0 ? `, ETA ${view.eta.toFixed(1)} s` : "";
  const percent = `${Math.round((view.progress || 0) * 100)}%`;
  setProgress(view.progress || 0, `${percent}${eta}${view.textinfo ? ` · ${view.textinfo}` : ""}`);
  if (view.live_preview) {
    lastPreviewId = view.id_live_preview ?? lastPreviewId;
    showPreview(view.live_preview, "live");
  }
}

async function globalProgress() {
  const progress = await api("sdapi/v1/progress");
  const state = progress.state || {};
  const eta = progress.eta_relative > 0 ? `, ETA ${progress.eta_relative.toFixed(1)} s` : "";
  const percent = `${Math.round((progress.progress || 0) * 100)}%`;
  const step = state.sampling_steps ? ` · step ${state.sampling_step}/${state.sampling_steps}` : "";
  setProgress(progress.progress || 0, `${percent}${eta}${step}`);
  if (progress.current_image) showPreview(dataUrl(progress.current_image), "live");
}

function setProgress(value, text) {
  $("progress").value = value;
  $("progress-text").textContent = text;
}

function showPreview(src, source) {
  const preview = $("preview");
  preview.src = src;
  preview.dataset.source = source; // "live" while sampling, "result" once the task is done
  preview.alt = source === "live" ? "Live preview" : "Latest result";
  preview.hidden = false;
}

async function finishJob(job) {
  const answer = await api(`agent-scheduler/v1/task/${job.id}`);
  if (!answer.success) { job.status = "deleted"; return; }
  const task = answer.data;
  if (!FINISHED.has(task.status)) { job.status = task.status; return; }
  job.status = task.status;
  job.error = task.result;
  if (task.status === "done") {
    const results = await api(`agent-scheduler/v1/task/${job.id}/results`);
    if (results.success) addToGallery(job, results.data);
    setProgress(1, "Done");
  } else if (task.status === "failed") {
    $("form-error").textContent = `Task failed: ${task.result || "unknown error"}`;
  }
}

// --- queue and gallery ---------------------------------------------------------------------

function queueRow(id, label, status) {
  const row = document.createElement("li");
  row.dataset.taskId = id;
  const badge = document.createElement("span");
  badge.className = `status ${status}`;
  badge.textContent = status;
  const text = document.createElement("span");
  text.className = "label";
  text.textContent = label || id;
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  cancel.setAttribute("aria-label", `Cancel ${label || id}`);
  cancel.addEventListener("click", () => cancelTask(id, cancel));
  row.append(badge, text, cancel);
  return row;
}

function renderQueue(queue) {
  const rows = [];
  if (queue.current_task_id) {
    const job = jobs.get(queue.current_task_id);
    rows.push(queueRow(queue.current_task_id, job ? job.prompt : "", "running"));
  }
  for (const task of queue.pending_tasks) rows.push(queueRow(task.id, (task.params || {}).prompt, "pending"));
  if (!rows.length) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "Empty";
    rows.push(empty);
  }
  $("queue").replaceChildren(...rows);
}

async function cancelTask(id, button) {
  button.disabled = true;
  try {
    await api(`agent-scheduler/v1/task/${id}`, { method: "DELETE" });
    const job = jobs.get(id);
    if (job && job.status === "pending") job.status = "deleted";
    startPolling();
    await refreshQueue();
  } catch (error) {
    $("form-error").textContent = error.message;
    button.disabled = false;
  }
}

function addToGallery(job, entries) {
  entries.forEach((entry, index) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = entry.image;
    image.alt = `Result ${index + 1}: ${job.prompt}`;
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = job.prompt;
    const info = document.createElement("button");
    info.type = "button";
    info.textContent = "Info";
    info.setAttribute("aria-label", `Infotext of result ${index + 1}: ${job.prompt}`);
    info.addEventListener("click", () => openInfo(entry));
    caption.append(label, info);
    figure.append(image, caption);
    $("gallery").prepend(figure);
  });
  if (entries.length) showPreview(entries[0].image, "result");
}

let infoEntry = null;

function openInfo(entry) {
  infoEntry = entry;
  $("info-text").value = entry.infotext;
  $("info-status").textContent = "";
  $("info-dialog").showModal();
}

async function copyInfo() {
  const text = $("info-text").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    $("info-text").select(); // no clipboard API (plain http): select it for Ctrl+C
    document.execCommand("copy");
  }
  $("info-status").textContent = "Copied";
}

// --- start ---------------------------------------------------------------------------------

function start() {
  $("generate-form").addEventListener("submit", generate);
  $("auth-form").addEventListener("submit", saveAuth);
  $("auth-clear").addEventListener("click", clearAuth);
  $("auth-toggle").addEventListener("click", () => ($("auth").hidden ? showAuth() : ($("auth").hidden = true)));
  $("copy-info").addEventListener("click", copyInfo);
  $("send-to-form").addEventListener("click", () => infoEntry && sendToForm(infoEntry.image));
  $("close-info").addEventListener("click", () => $("info-dialog").close());
  loadCatalogs();
  refreshQueue();
}

start();

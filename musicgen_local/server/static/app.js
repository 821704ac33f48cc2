// The playground: load the schema, build the form, run predictions and show them.
// A prediction's life on the page: submit -> watch() polls GET /v1/predictions/{id} -> showRun()
// on every answer -> showResult() once it succeeded.

import { api, progressFromLogs, seedFromLogs, statusText, TERMINAL, visibleLogs } from "./api.js";
import { buildForm, fieldsFromSchema, fillForm, markInvalid, readInput } from "./form.js";
import { History } from "./history.js";
import { ModelPicker } from "./models.js";
import { outputFiles, showOutput } from "./result-view.js";
import { StreamPlayer } from "./stream.js";

const POLL_MS = 400;
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const form = $("predict-form");
const state = { version: null, fields: [], current: null, shown: null, watching: 0, choosing: 0 };
const schemas = new Map(); // model ("owner/name") -> its form's fields, from its latest version's schema
const live = new StreamPlayer((count) => {
  $("live").hidden = false;
  $("live").dataset.segments = String(count);
  $("live").textContent = `Playing as it generates: ${count} segment${count === 1 ? "" : "s"} so far`;
});

const picker = new ModelPicker($("model-picker"), useVersion);

const history = new History(
  { list: $("history-list"), empty: $("history-empty"), newer: $("history-newer"), older: $("history-older"),
    refresh: $("history-refresh") },
  { onLoad: loadIntoForm, onOpen: (pred) => { revealOutput(); watch(pred); } },
);

// The fields of a model's form: meta/musicgen's (its fine-tunes run its schema) or the looper's.
async function fieldsOf(model) {
  if (!schemas.has(model)) {
    const found = await api(`/v1/models/${model}`);
    schemas.set(model, fieldsFromSchema(found.latest_version.openapi_schema));
  }
  return schemas.get(model);
}

async function start() {
  let version;
  try {
    history.defaults = Object.fromEntries((await fieldsOf("meta/musicgen")).map((f) => [f.name, f.default]));
    version = await picker.refresh();
    await useVersion(version);
  } catch (err) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = "Try again";
    retry.addEventListener("click", start);
    $("fields").replaceChildren(`Could not load the model schema: ${err.message} `, retry);
    return;
  }
  $("submit").disabled = false;
  await history.load();
}

// The version predictions run on (or the deployment they go through); the form is its model's (built again
// when the model's schema is another); a trained one locks model_version to the one it was tuned from.
async function useVersion(version) {
  const ticket = ++state.choosing;
  const fields = await fieldsOf(version.schema);
  if (ticket !== state.choosing) return; // the user picked another while the schema came
  if (fields !== state.fields) {
    state.fields = fields;
    buildForm($("fields"), fields);
    fillForm(form, fields);
  }
  state.version = version.version;
  state.deployment = version.deployment;
  state.model = version.model;
  state.base = version.base;
  $("model-label").textContent = version.deployment ? `${version.deployment} (${version.model})` : version.model;
  $("version-label").textContent = ` · version ${version.version.slice(0, 8)}`;
  $("model-description").textContent = version.description; // the owner's words: text, never markup
  $("model-description").hidden = !version.description;
  lockModelVersion();
}

function lockModelVersion() {
  const field = form.elements.namedItem("model_version");
  if (!field) return;
  if (state.base) field.value = state.base;
  field.disabled = Boolean(state.base);
  field.title = state.base ? `This version was fine-tuned from ${state.base}: it runs that model only.` : "";
}

function note(text, isError = false) {
  const el = $("form-note");
  el.textContent = text || "";
  el.hidden = !text;
  el.classList.toggle("error", isError);
  el.setAttribute("role", isError ? "alert" : "status");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  note(null);
  const input = readInput(form, state.fields);
  live.unlock(); // inside the click: browsers allow sound once the user has acted
  $("submit").disabled = true;
  let pred;
  try {
    pred = state.deployment
      ? await api(`/v1/deployments/${state.deployment}/predictions`, { method: "POST", json: { input } })
      : await api("/v1/predictions", { method: "POST", json: { version: state.version, input } });
  } catch (err) {
    note(err.message, true);
    markInvalid(form, err.body && err.body.invalid_fields);
    return;
  } finally {
    $("submit").disabled = false;
  }
  markInvalid(form, []);
  revealOutput();
  watch(pred);
});

// On a phone the output sits below the form, and from the history it is above: bring it into view.
function revealOutput() {
  const { top } = document.querySelector(".output").getBoundingClientRect();
  if (top < 0 || top > window.innerHeight * 0.5) document.querySelector(".output").scrollIntoView({ block: "start" });
}

$("reset").addEventListener("click", () => {
  fillForm(form, state.fields);
  lockModelVersion();
  note(null);
});

// Follow one prediction until it ends; a newer watch (another submit, "Open" in the history)
// replaces this one.
async function watch(pred) {
  const ticket = ++state.watching;
  state.current = pred;
  $("idle").hidden = true;
  $("result").hidden = true;
  $("run").hidden = false;
  $("live").hidden = true;
  delete $("live").dataset.segments;
  if (!TERMINAL.has(pred.status) && pred.urls && pred.urls.stream) live.play(pred.urls.stream);
  showRun(pred);
  while (!TERMINAL.has(pred.status)) {
    await sleep(POLL_MS);
    if (ticket !== state.watching) return;
    try {
      pred = await api(`/v1/predictions/${pred.id}`);
    } catch (err) {
      $("status").textContent = `Lost contact with the server (${err.message}); retrying…`;
      continue;
    }
    if (ticket !== state.watching) return;
    state.current = pred;
    showRun(pred);
  }
  if (ticket === state.watching) {
    live.stop(); // the finished file (or nothing, if it failed) takes over, and the live line goes
    $("live").hidden = true;
  }
  if (pred.status === "succeeded") await showResult(pred);
  if (ticket === state.watching) await history.load();
}


function showRun(pred) {
  const status = $("status");
  status.textContent = statusText(pred, { withError: true });
  status.dataset.status = pred.status;
  status.dataset.predictionId = pred.id;
  const progress = progressFromLogs(pred.logs);
  $("progress").value = pred.status === "succeeded" ? 100 : progress ? progress.percent : 0;
  $("cancel").hidden = TERMINAL.has(pred.status);
  $("cancel").disabled = false;
  const logs = $("logs");
  logs.textContent = visibleLogs(pred.logs);
  logs.scrollTop = logs.scrollHeight;
}

$("cancel").addEventListener("click", async () => {
  const pred = state.current;
  if (!pred) return;
  $("cancel").disabled = true;
  $("status").textContent = "Canceling…";
  try {
    await api(`/v1/predictions/${pred.id}/cancel`, { method: "POST" });
  } catch (err) {
    $("status").textContent = `Could not cancel: ${err.message}`;
    $("cancel").disabled = false;
  } // the watch loop sees the prediction end `canceled`
});

async function showResult(pred) {
  state.shown = pred;
  const seed = await showOutput(pred, () => state.shown === pred);
  $("reuse-seed").disabled = seed === null;
}

function firstUriField() {
  const field = state.fields.find((f) => f.kind === "uri");
  return field && form.elements.namedItem(field.name);
}

$("use-as-input").addEventListener("click", () => {
  const target = firstUriField();
  if (!state.shown || !target) return;
  target.value = outputFiles(state.shown.output)[0][1];
  target.focus();
  note(`The output is now ${target.name}: pick a melody model, or turn on continuation, and generate.`);
});

$("reuse-seed").addEventListener("click", () => {
  const seed = seedFromLogs(state.shown && state.shown.logs);
  const target = form.elements.namedItem("seed");
  if (seed === null || !target) return;
  target.value = String(seed);
  target.focus();
});

async function loadIntoForm(pred) {
  let version = null;
  let problem = "";
  try {
    version = (pred.deployment && await picker.choose(`deployment:${pred.deployment}`)) || await picker.choose(pred.version);
    if (!version) problem = `its version ${pred.version} is not on this server`;
  } catch (err) {
    problem = `the models could not be read (${err.message})`;
  }
  if (version) await useVersion(version); // its model's form first, then its inputs in it
  fillForm(form, state.fields, pred.input || {});
  lockModelVersion(); // the inputs just loaded may name another model_version than the locked one
  note(problem ? `Loaded the inputs of prediction ${pred.id}, but ${problem}: the form keeps ${state.model}.`
    : `Loaded the inputs of prediction ${pred.id}.`, Boolean(problem));
  form.scrollIntoView({ block: "start" });
  const first = form.querySelector("input, select, textarea");
  if (first) first.focus({ preventScroll: true });
}

start();

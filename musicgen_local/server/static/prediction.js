// The page of one prediction (its `urls.web`, /p/<id>): its input, its status as it changes, its logs, the audio
// while it generates (its stream), then the file with its pictures, or its error; and a button that runs the
// same input again (through its deployment, when it was made through one) and opens the new prediction's page.
// A client of the public /v1 API like the playground (api.js): user text is only ever set as text.

import { api, progressFromLogs, statusText, TERMINAL, visibleLogs } from "./api.js";
import { showOutput } from "./result-view.js";
import { StreamPlayer } from "./stream.js";

const POLL_MS = 400;
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const predictionId = decodeURIComponent(window.location.pathname.split("/").pop());
const live = new StreamPlayer((count) => {
  $("live").hidden = false;
  $("live").dataset.segments = String(count);
  $("live").textContent = `Playing as it generates: ${count} segment${count === 1 ? "" : "s"} so far`;
});
let shown = null; // the prediction as last read


function pair(list, term, value) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = value;
  list.append(dt, dd);
}

// The input as sent (the keys the model knows), and where and when it ran.
function showInput(pred) {
  const input = $("input");
  input.replaceChildren();
  for (const [key, value] of Object.entries(pred.input || {})) {
    pair(input, key, typeof value === "string" ? value : JSON.stringify(value));
  }
  $("input-removed").hidden = !pred.data_removed;
  const facts = $("facts");
  facts.replaceChildren();
  pair(facts, "version", `${pred.model}:${pred.version}`);
  if (pred.deployment) pair(facts, "deployment", pred.deployment);
  pair(facts, "created", new Date(pred.created_at).toLocaleString());
  if (pred.deadline) pair(facts, "deadline", new Date(pred.deadline).toLocaleString());
  if (pred.metrics && pred.metrics.total_time) pair(facts, "total time", `${pred.metrics.total_time.toFixed(1)} s`);
  $("model-label").textContent = pred.deployment ? `${pred.deployment} (${pred.model})` : pred.model;
}

function showRun(pred) {
  const status = $("status");
  status.textContent = statusText(pred);
  status.dataset.status = pred.status;
  const progress = progressFromLogs(pred.logs);
  $("progress").value = pred.status === "succeeded" ? 100 : progress ? progress.percent : 0;
  $("cancel").hidden = TERMINAL.has(pred.status);
  $("error").textContent = pred.error || "";
  $("error").hidden = !pred.error;
  $("logs").textContent = visibleLogs(pred.logs);
  $("logs").scrollTop = $("logs").scrollHeight;
  $("run-again").disabled = pred.data_removed;
}

async function showResult(pred) {
  await showOutput(pred);
}

// Follow the prediction until it ends: its stream plays while it generates.
async function follow() {
  let pred;
  for (;;) {
    try {
      pred = await api(`/v1/predictions/${encodeURIComponent(predictionId)}`);
      break;
    } catch (err) {
      $("status").textContent = err.status === 404 ? `No prediction ${predictionId} on this server.` : `Could not read it: ${err.message}; retrying…`;
      $("status").dataset.status = err.status === 404 ? "missing" : "";
      if (err.status === 404) return;
      await sleep(POLL_MS * 5);
    }
  }
  $("prediction-id").textContent = pred.id;
  document.title = `Prediction ${pred.id} · musicgen-local`;
  shown = pred;
  showInput(pred);
  if (!TERMINAL.has(pred.status) && pred.urls && pred.urls.stream) live.play(pred.urls.stream);
  showRun(pred);
  while (!TERMINAL.has(pred.status)) {
    await sleep(POLL_MS);
    try {
      pred = await api(`/v1/predictions/${encodeURIComponent(predictionId)}`);
    } catch (err) {
      $("status").textContent = `Lost contact with the server (${err.message}); retrying…`;
      continue;
    }
    shown = pred;
    showRun(pred);
  }
  live.stop();
  $("live").hidden = true;
  showInput(pred); // its metrics, now that it ended
  if (pred.status === "succeeded" && pred.output) await showResult(pred);
}

function note(text, isError) {
  $("run-again-note").textContent = text;
  $("run-again-note").hidden = !text;
  $("run-again-note").classList.toggle("error", isError);
}

// The same input again: through the deployment it was made through (its current version), else on its version.
$("run-again").addEventListener("click", async () => {
  if (!shown) return;
  live.unlock(); // inside the click: the new page plays its stream
  $("run-again").disabled = true;
  const { input } = shown;
  const path = shown.deployment ? `/v1/deployments/${shown.deployment}/predictions` : "/v1/predictions";
  const body = shown.deployment ? { input } : { version: shown.version, input };
  try {
    const created = await api(path, { method: "POST", json: body });
    note(`Started prediction ${created.id}; opening its page…`, false);
    window.location.assign(created.urls.web);
  } catch (err) {
    note(`Could not run it again: ${err.message}`, true);
    $("run-again").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  $("cancel").disabled = true;
  try {
    await api(`/v1/predictions/${encodeURIComponent(predictionId)}/cancel`, { method: "POST" });
  } catch (err) {
    $("status").textContent = `Could not cancel: ${err.message}`;
  }
  $("cancel").disabled = false;
});

follow();

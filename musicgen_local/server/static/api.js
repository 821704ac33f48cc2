// The page's only way to the server: the public /v1 API, as any client uses it.
// When /v1 answers 401 the token form opens (once per tab); the token lives in sessionStorage only
// and goes out as `Authorization: Bearer <token>`, as the official clients send it.

const TOKEN_KEY = "musicgen-local.token";
export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export class ApiError extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
    this.body = body;
  }
}

// Problem bodies carry `detail` (422: one "- input.field: reason" line per field) and `title`.
function describeError(status, body) {
  if (body && typeof body === "object") return body.detail || body.title || `HTTP ${status}`;
  return body ? String(body) : `HTTP ${status}`;
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
let asking = null; // the open token form, shared by every call that got a 401 meanwhile

function askForToken(refused) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-error").hidden = !refused;
  input.value = "";
  asking = new Promise((resolve, reject) => {
    const onCancel = () => { dialog.returnValue = "cancel"; }; // Escape
    const done = () => {
      dialog.removeEventListener("close", done);
      dialog.removeEventListener("cancel", onCancel);
      asking = null;
      const given = input.value.trim();
      if (dialog.returnValue !== "cancel" && given) {
        sessionStorage.setItem(TOKEN_KEY, given);
        resolve();
      } else {
        reject(new ApiError(401, { detail: "This server needs its API token; reload the page to enter it." }));
      }
    };
    dialog.returnValue = "";
    dialog.addEventListener("cancel", onCancel);
    dialog.addEventListener("close", done);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

async function readBody(resp) {
  const text = await resp.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return text;
  }
}

// `path`: "/v1/..." or an absolute same-origin URL (the list's `next`/`previous` links).
// `json` is sent as a JSON body; `body` (FormData) as is. Resolves to the parsed JSON answer.
export async function api(path, { method = "GET", json, body } = {}) {
  for (;;) {
    const sent = token();
    const headers = sent ? { Authorization: `Bearer ${sent}` } : {};
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    }
    const resp = await fetch(path, { method, headers, body: payload });
    if (resp.status === 401) {
      // Another call may have stored a token since this one left: retry with it before asking.
      if (token() === sent) await askForToken(Boolean(sent));
      continue;
    }
    const data = await readBody(resp);
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }
}

// A local file for a `format: uri` input: POST /v1/files (multipart, part `content`), as the
// official clients upload; the answer's `urls.get` is what the input takes.
export async function uploadFile(file) {
  const form = new FormData();
  form.append("content", file, file.name);
  const record = await api("/v1/files", { method: "POST", body: form });
  return record.urls.get;
}

// tqdm-style progress in the logs, e.g. " 43%|████▎     | 23/53 [00:01<00:01, 19.17it/s]":
// the last such line wins (what the npm client's parseProgressFromLogs reads).
const PROGRESS = /^\s*(\d+)%\s*\|.*?\|\s*(\d+)\/(\d+)/;

export function progressFromLogs(logs) {
  const lines = (logs || "").split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const match = PROGRESS.exec(lines[i]);
    if (match) return { percent: Number(match[1]), current: Number(match[2]), total: Number(match[3]) };
  }
  return null;
}

export const isProgressLine = (line) => PROGRESS.test(line);

// A prediction's status in words; `withError` puts a failure's message on the same line (the playground's one
// status line; a prediction's page shows the error in a block of its own).
export function statusText(pred, { withError = false } = {}) {
  const progress = progressFromLogs(pred.logs);
  switch (pred.status) {
    case "starting":
      return "Waiting for the engine…";
    case "processing":
      return progress ? `Generating: ${progress.percent}% (${progress.current}/${progress.total} steps)` : "Preparing…";
    case "succeeded": {
      const time = pred.metrics && pred.metrics.predict_time;
      return time ? `Succeeded in ${time.toFixed(1)} s` : "Succeeded";
    }
    case "failed":
      return withError ? `Failed: ${pred.error || "unknown error"}` : "Failed";
    default:
      return pred.status.charAt(0).toUpperCase() + pred.status.slice(1);
  }
}

// The logs, with the progress lines folded into the latest one.
export function visibleLogs(logs) {
  const lines = (logs || "").split("\n").filter((line) => line.trim() !== "");
  const last = lines.filter(isProgressLine).pop();
  return [...lines.filter((line) => !isProgressLine(line)), ...(last ? [last] : [])].join("\n");
}

export function seedFromLogs(logs) {
  const match = /Using seed (\d+)/.exec(logs || "");
  return match ? Number(match[1]) : null;
}

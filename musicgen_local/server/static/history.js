// Past predictions from GET /v1/predictions (newest first, paginated by `next`/`previous` links):
// each with its prompt, settings and player, and buttons to load its inputs back into the form or
// to open it in the output panel.

import { api, seedFromLogs } from "./api.js";
import { outputFiles } from "./result-view.js";

const FIRST_PAGE = "/v1/predictions";

function element(tag, attrs = {}, text) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  if (text !== undefined) el.textContent = text;
  return el;
}

const ALWAYS_SHOWN = new Set(["model_version", "duration"]);

function shorten(text, keep = 40) {
  return text.length > keep ? `${text.slice(0, 12)}…${text.slice(-(keep - 13))}` : text;
}

// The settings that matter: the model, the duration, and every input that differs from its default.
function settingsText(pred, defaults) {
  const model = pred.model && pred.model !== "meta/musicgen" ? [`${pred.model}:${pred.version.slice(0, 8)}`] : [];
  if (pred.deployment) model.unshift(`via ${pred.deployment}`);
  const parts = model.concat(Object.entries(pred.input || {})
    .filter(([key, value]) => key !== "prompt" && (ALWAYS_SHOWN.has(key) || value !== defaults[key]))
    .map(([key, value]) => `${key} ${typeof value === "string" ? shorten(value) : JSON.stringify(value)}`));
  const seed = seedFromLogs(pred.logs);
  if (seed !== null && !("seed" in (pred.input || {}))) parts.push(`seed used ${seed}`);
  return parts.join(" · ");
}

export class History {
  // els: {list, empty, newer, older, refresh}; onLoad(pred) / onOpen(pred): the buttons' actions.
  constructor(els, { onLoad, onOpen }) {
    Object.assign(this, els, { onLoad, onOpen });
    this.url = FIRST_PAGE;
    this.page = null;
    this.defaults = {}; // input name -> schema default, set once the schema is loaded
    this.refresh.addEventListener("click", () => this.load(this.url));
    this.newer.addEventListener("click", () => this.page && this.load(this.page.previous));
    this.older.addEventListener("click", () => this.page && this.load(this.page.next));
  }

  async load(url = FIRST_PAGE) {
    try {
      this.page = await api(url);
      this.url = url;
    } catch (err) {
      this.list.replaceChildren(element("li", { class: "error" }, `Could not load the history: ${err.message}`));
      return;
    }
    this.list.replaceChildren(...this.page.results.map((pred) => this.item(pred)));
    this.empty.hidden = this.page.results.length > 0;
    this.newer.disabled = !this.page.previous;
    this.older.disabled = !this.page.next;
  }

  item(pred) {
    const li = element("li", { class: "history-item", "data-prediction-id": pred.id });
    const prompt = pred.input && pred.input.prompt ? pred.input.prompt : "(no prompt)";
    const head = element("p", { class: "history-prompt" });
    head.append(element("span", { class: `badge badge-${pred.status}` }, pred.status), ` ${prompt}`);
    const when = new Date(pred.created_at).toLocaleString();
    li.append(head, element("p", { class: "muted history-settings" }, `${when} · ${settingsText(pred, this.defaults)}`));
    const [first] = outputFiles(pred.output);
    if (first) {
      li.append(element("audio", { controls: "", preload: "none", src: first[1],
        "aria-label": `Output of "${prompt}"` }));
    } else if (pred.error) {
      li.append(element("p", { class: "error" }, pred.error));
    }
    const actions = element("div", { class: "actions" });
    const load = element("button", { type: "button", "data-action": "load" }, "Load into form");
    const open = element("button", { type: "button", "data-action": "open" }, "Open");
    load.addEventListener("click", () => this.onLoad(pred));
    open.addEventListener("click", () => this.onOpen(pred));
    actions.append(load, open);
    if (pred.urls && pred.urls.web) actions.append(element("a", { class: "button", href: pred.urls.web, "data-action": "page" }, "Page"));
    li.append(actions);
    return li;
  }
}

// The model picker: every version this server runs, from GET /v1/models (meta/musicgen's latest first,
// then each model made with POST /v1/models, its versions newest first). A trained version runs only the
// model_version it was tuned from, so choosing one locks that field. Names come from users: they are
// only ever set as text.

import { api } from "./api.js";

const PUBLISHED = "meta/musicgen";

export async function listVersions() {
  const page = await api("/v1/models");
  const versions = [];
  for (const model of page.results) {
    const name = `${model.owner}/${model.name}`;
    if (name === PUBLISHED) {
      if (model.latest_version) versions.push({ id: model.latest_version.id, model: name, base: null,
        label: `${name} (published)` });
      continue;
    }
    const path = `/v1/models/${encodeURIComponent(model.owner)}/${encodeURIComponent(model.name)}/versions`;
    for (const v of (await api(path)).results) {
      const kind = v.weights_kind === "full" ? "full fine-tune" : "LoRA";
      versions.push({ id: v.id, model: name, base: v.base_model_version || null,
        label: `${name}:${v.id.slice(0, 8)} · ${kind} of ${v.base_model_version}` });
    }
  }
  return versions;
}

export class ModelPicker {
  // onChange(version): called when the user picks another version ({id, model, base, label}).
  constructor(select, onChange) {
    this.select = select;
    this.versions = [];
    // A training may have finished since the page loaded: the list is read again whenever it is opened.
    select.addEventListener("focus", () => this.refresh());
    select.addEventListener("change", () => onChange(this.selected()));
  }

  async refresh() {
    const keep = this.select.value;
    this.versions = await listVersions();
    this.select.replaceChildren(...this.versions.map((v) => {
      const option = document.createElement("option");
      option.value = v.id;
      option.textContent = v.label;
      return option;
    }));
    if (this.versions.some((v) => v.id === keep)) this.select.value = keep;
    return this.selected();
  }

  choose(id) {
    if (this.versions.some((v) => v.id === id)) this.select.value = id;
    return this.selected();
  }

  selected() {
    return this.versions.find((v) => v.id === this.select.value) || this.versions[0];
  }
}

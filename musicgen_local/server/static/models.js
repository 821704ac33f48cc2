// The model picker: every version this server runs, from GET /v1/models (the published models' latest versions
// first: meta/musicgen, andreasjansson/musicgen-looper; then each model made with POST /v1/models, its versions
// newest first), then every deployment (GET /v1/deployments: predictions go through it, on whatever version it
// points at when they are made). A trained version runs only the model_version it was tuned from, so choosing
// one locks that field. Descriptions come from users: they are only ever set as text (names are plain by the
// server's rule, and set as text too).

import { api } from "./api.js";

const MUSICGEN = "meta/musicgen";
const PUBLISHED = [MUSICGEN, "andreasjansson/musicgen-looper"]; // each with an input schema of its own
const schemaOf = (model) => (PUBLISHED.includes(model) ? model : MUSICGEN); // fine-tunes run meta/musicgen's
const KINDS = { lora: "LoRA", full: "full fine-tune" };

// What the page needs of one version: {id, version, model, schema, base, label, description, deployment}; schema
// names the published model whose input schema it runs; base is null for a version that runs any model_version;
// deployment ("owner/name") only for a deployment's entry, whose id is `deployment:owner/name`.
function entry(model, version) {
  const name = `${model.owner}/${model.name}`;
  const common = {
    id: version.id, version: version.id, model: name, schema: schemaOf(name), description: model.description || "",
    deployment: null,
  };
  if (PUBLISHED.includes(name)) return { ...common, base: null, label: `${name} (published)` };
  const short = `${name}:${version.id.slice(0, 8)}`;
  if (!version.base_model_version) return { ...common, base: null, label: short };
  const kind = KINDS[version.weights_kind] || version.weights_kind;
  return { ...common, base: version.base_model_version, label: `${short} · ${kind} of ${version.base_model_version}` };
}

export async function listVersions() {
  const page = await api("/v1/models");
  // Every model's versions are asked for at once: a page with many models still opens promptly.
  const lists = await Promise.all(page.results.map(async (model) => {
    if (PUBLISHED.includes(`${model.owner}/${model.name}`)) return model.latest_version ? [entry(model, model.latest_version)] : [];
    const path = `/v1/models/${encodeURIComponent(model.owner)}/${encodeURIComponent(model.name)}/versions`;
    return (await api(path)).results.map((v) => entry(model, v));
  }));
  const versions = lists.flat();
  return versions.concat(await listDeployments(versions));
}

// Each deployment, described by the version it runs now (one the list above has, else one of meta/musicgen's).
async function listDeployments(versions) {
  const page = await api("/v1/deployments");
  return page.results.map((d) => {
    const name = `${d.owner}/${d.name}`;
    const { model, version } = d.current_release;
    const runs = versions.find((v) => v.version === version) || { base: null, description: "" };
    return {
      id: `deployment:${name}`, version, model, schema: schemaOf(model), base: runs.base, deployment: name, description: runs.description,
      label: `${name} · deployment of ${model}:${version.slice(0, 8)}`,
    };
  });
}

const sameList = (a, b) => a.length === b.length && a.every((v, i) => v.id === b[i].id && v.label === b[i].label);

export class ModelPicker {
  // onChange(version): called whenever the version in use changes (the user picked another, or the one
  // in use is gone from a new reading).
  constructor(select, onChange) {
    this.select = select;
    this.onChange = onChange;
    this.versions = [];
    this.readings = 0;
    // A training may have finished since the page loaded: the list is read again whenever it is opened
    // (focus for the keyboard, pointerdown for a click on an already focused picker). A failed re-reading
    // keeps the list the page has; the next opening tries again.
    const reread = () => this.refresh().catch(() => {});
    select.addEventListener("focus", reread);
    select.addEventListener("pointerdown", reread);
    select.addEventListener("change", () => onChange(this.selected()));
  }

  // Resolves to the version in use after reading the list again.
  async refresh() {
    const ticket = ++this.readings;
    const versions = await listVersions();
    if (ticket !== this.readings) return this.selected(); // a later reading is under way: it has the last word
    // Read the choice after the answer: the user may have picked another version while it came.
    const keep = this.select.value;
    // The same list leaves the options alone, so that an open picker does not change under the pointer.
    if (!sameList(versions, this.versions)) {
      this.select.replaceChildren(...versions.map((v) => {
        const option = document.createElement("option");
        option.value = v.id;
        option.textContent = v.label;
        return option;
      }));
    }
    this.versions = versions;
    if (versions.some((v) => v.id === keep)) {
      this.select.value = keep;
    } else if (keep) {
      this.onChange(this.selected()); // the page must not go on posting a version the list no longer has
    }
    return this.selected();
  }

  // The version with this id in use, reading the list again first if the page does not know it yet (a
  // prediction from the history may name a version trained since). Resolves to null when the server
  // has no such version.
  async choose(id) {
    if (!this.versions.some((v) => v.id === id)) await this.refresh();
    if (!this.versions.some((v) => v.id === id)) return null;
    this.select.value = id;
    return this.selected();
  }

  selected() {
    return this.versions.find((v) => v.id === this.select.value) || this.versions[0];
  }
}

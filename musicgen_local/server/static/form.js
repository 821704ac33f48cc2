// The form, generated from the version's OpenAPI `Input` schema (the server's one source of truth):
// one control per property in `x-order`, named after the property, with its default, choices,
// range and description. Nothing here knows MusicGen's fields, except that `prompt` gets a
// multi-line box.

import { uploadFile } from "./api.js";

const MULTILINE = new Set(["prompt"]);

// -> [{name, kind, title, description, default, min, max, choices}], in x-order.
export function fieldsFromSchema(openapi) {
  const schemas = openapi.components.schemas;
  const input = schemas.Input;
  const enumOf = (prop) => {
    const ref = prop.$ref || (prop.allOf && prop.allOf[0] && prop.allOf[0].$ref);
    return prop.enum || (ref ? schemas[ref.split("/").pop()].enum : null);
  };
  return Object.entries(input.properties)
    .sort(([, a], [, b]) => (a["x-order"] ?? 0) - (b["x-order"] ?? 0))
    .map(([name, prop]) => {
      const choices = enumOf(prop);
      let kind = choices ? "choice" : prop.type || "string";
      if (kind === "string" && prop.format === "uri") kind = "uri";
      if (kind === "string" && MULTILINE.has(name)) kind = "text";
      return {
        name, kind, choices, title: prop.title || name, description: prop.description || "",
        default: prop.default, min: prop.minimum, max: prop.maximum,
      };
    });
}

function element(tag, attrs = {}, text) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(key, value);
  }
  if (text !== undefined) el.textContent = text;
  return el;
}

function hint(field) {
  const parts = [];
  if (field.default !== undefined) parts.push(`default ${JSON.stringify(field.default)}`);
  if (field.min !== undefined) parts.push(`min ${field.min}`);
  if (field.max !== undefined) parts.push(`max ${field.max}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function control(field, id, describedBy) {
  const common = { id, name: field.name, "aria-describedby": describedBy };
  switch (field.kind) {
    case "choice": {
      const select = element("select", common);
      for (const choice of field.choices) select.append(element("option", { value: choice }, choice));
      return select;
    }
    case "boolean":
      return element("input", { ...common, type: "checkbox" });
    case "integer":
    case "number":
      return element("input", { ...common, type: "number", inputmode: field.kind === "integer" ? "numeric" : "decimal",
        step: field.kind === "integer" ? "1" : "any", min: field.min, max: field.max });
    case "text":
      return element("textarea", { ...common, rows: "3" });
    case "uri":
      return element("input", { ...common, type: "url", placeholder: "a URL, or choose a file below" });
    default:
      return element("input", { ...common, type: "text" });
  }
}

// A file picker beside a `format: uri` field: the file is uploaded at once through /v1/files and
// its URL written into the field, so what is sent is always what the field shows.
function filePicker(field, urlInput) {
  const wrap = element("div", { class: "upload" });
  const id = `field-${field.name}-file`;
  const label = element("label", { for: id }, "or upload a file");
  const picker = element("input", { id, type: "file", accept: "audio/*", "data-upload-for": field.name });
  const status = element("span", { class: "muted upload-status", role: "status" });
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    if (!file) return;
    status.textContent = `Uploading ${file.name}…`;
    try {
      urlInput.value = await uploadFile(file);
      status.textContent = `Uploaded ${file.name}.`;
    } catch (err) {
      status.textContent = `Upload failed: ${err.message}`;
    }
  });
  wrap.append(label, picker, status);
  return wrap;
}

export function buildForm(container, fields) {
  container.replaceChildren();
  for (const field of fields) {
    const id = `field-${field.name}`;
    const descId = `${id}-desc`;
    const row = element("div", { class: `field field-${field.kind}`, "data-field": field.name });
    const label = element("label", { for: id }, field.title);
    const input = control(field, id, descId);
    const desc = element("small", { id: descId, class: "muted" }, field.description + hint(field));
    if (field.kind === "boolean") row.append(input, label, desc);
    else row.append(label, input, desc);
    if (field.kind === "uri") row.append(filePicker(field, input));
    container.append(row);
  }
}

// The form's values as an `input` object: empty optional fields are left out (the server then
// applies its own defaults, e.g. a random seed), booleans and choices are always sent.
export function readInput(form, fields) {
  const input = {};
  for (const field of fields) {
    const el = form.elements.namedItem(field.name);
    if (field.kind === "boolean") input[field.name] = el.checked;
    else if (field.kind === "choice") input[field.name] = el.value;
    else if (el.value.trim() === "") continue;
    else if (field.kind === "integer" || field.kind === "number") input[field.name] = Number(el.value);
    else input[field.name] = el.value;
  }
  return input;
}

// Show `input` in the form; fields it does not name go back to their defaults.
export function fillForm(form, fields, input = {}) {
  for (const field of fields) {
    const el = form.elements.namedItem(field.name);
    const value = field.name in input ? input[field.name] : field.default;
    if (field.kind === "boolean") el.checked = Boolean(value);
    else el.value = value === undefined || value === null ? "" : String(value);
    el.removeAttribute("aria-invalid");
    if (field.kind === "uri") {
      const picker = form.querySelector(`[data-upload-for="${field.name}"]`);
      picker.value = "";
      picker.parentElement.querySelector(".upload-status").textContent = "";
    }
  }
}

// 422 answers name each bad field as "input.<name>": mark those controls.
export function markInvalid(form, invalidFields = []) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  let first = null;
  for (const { field } of invalidFields) {
    const el = form.elements.namedItem(String(field).replace(/^input\./, ""));
    if (el && el.setAttribute) {
      el.setAttribute("aria-invalid", "true");
      first = first || el;
    }
  }
  if (first) first.focus();
}

// A succeeded prediction's output on a page (the playground's and a prediction's own share the ids): the player
// and its download link, every file of an output object (the looper's variation_01, variation_02, ...), the seed
// from the logs, and the pictures of the first file.

import { seedFromLogs } from "./api.js";
import { decodeAudio, showPictures } from "./audio-view.js";

const $ = (id) => document.getElementById(id);

// [name, url] for each file of an output: a URL (meta/musicgen's) or an object of URLs (the looper's).
export function outputFiles(output) {
  if (!output) return [];
  if (typeof output === "string") return [["output", output]];
  return Object.entries(output).filter(([, url]) => typeof url === "string");
}

function fileName(pred, name) {
  const ext = (pred.input && pred.input.output_format) || "wav";
  return name === "output" ? `musicgen-${pred.id}.${ext}` : `musicgen-${pred.id}-${name}.${ext}`;
}

// Every file but the one in the main player, each with its own player and download link. Names come from the
// server's output object: set as text only.
function showOtherFiles(pred, files) {
  const list = $("variations");
  list.replaceChildren(...files.map(([name, url]) => {
    const li = document.createElement("li");
    li.dataset.name = name;
    const label = document.createElement("span");
    label.textContent = name;
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = url;
    audio.setAttribute("aria-label", name);
    const link = document.createElement("a");
    link.className = "button";
    link.href = url;
    link.download = fileName(pred, name);
    link.textContent = "Download";
    li.append(label, audio, link);
    return li;
  }));
  list.hidden = files.length < 2;
}

// Resolves once the pictures are drawn; `stillShown()` says whether the page still shows this prediction.
export async function showOutput(pred, stillShown = () => true) {
  const files = outputFiles(pred.output);
  const [name, url] = files[0] || ["output", ""];
  const player = $("player");
  player.dataset.predictionId = pred.id;
  player.src = url;
  $("download").href = url;
  $("download").download = fileName(pred, name);
  showOtherFiles(pred, files);
  const seed = seedFromLogs(pred.logs);
  $("seed").textContent = seed === null ? "unknown" : String(seed);
  $("result").hidden = false;
  const labels = document.querySelectorAll(".channels-label");
  try {
    const buffer = await decodeAudio(url);
    if (!stillShown()) return seed;
    $("nyquist").textContent = `${buffer.sampleRate / 2000} kHz`;
    labels.forEach((el) => { el.textContent = buffer.numberOfChannels === 2 ? "(stereo: left above, right below)" : ""; });
    showPictures(buffer, $("waveform"), $("spectrogram"));
  } catch (err) {
    labels.forEach((el) => { el.textContent = `(could not draw: ${err.message})`; });
  }
  return seed;
}

// Pictures of an output: a waveform and a spectrogram drawn on <canvas> from the decoded audio,
// one lane per channel (stereo: left on top, right below). Plain Web Audio + a small FFT.

const DECODE_RATE = 32000; // MusicGen's rate; other rates are resampled, which a picture does not mind
const FFT_SIZE = 512; // 16 ms at 32 kHz: 62.5 Hz per bin
const DB_RANGE = 80; // the spectrogram shows the loudest 80 dB
const BACKGROUND = "#111827";
const WAVE = "#38bdf8";
const LANE_GAP = 4;
const GAP_COLOUR = "#4b5563";

export async function decodeAudio(url) {
  const resp = await fetch(url); // delivery URLs are public, data: URIs are fetched in place
  if (!resp.ok) throw new Error(`could not fetch the output (HTTP ${resp.status})`);
  const bytes = await resp.arrayBuffer();
  const context = new OfflineAudioContext(1, 1, DECODE_RATE); // decoding needs no sound device
  return context.decodeAudioData(bytes);
}

// Size the canvas backing store to its CSS box, so lines stay sharp on any screen.
function fit(canvas) {
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * scale));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = BACKGROUND;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  return ctx;
}

// One horizontal lane per channel, separated by a visible gap.
function lanes(ctx, channels) {
  const { width, height: total } = ctx.canvas;
  const gap = channels > 1 ? LANE_GAP : 0;
  const height = Math.floor((total - gap * (channels - 1)) / channels);
  ctx.fillStyle = GAP_COLOUR;
  for (let ch = 1; ch < channels; ch++) ctx.fillRect(0, ch * (height + gap) - gap, width, gap);
  return Array.from({ length: channels }, (_, ch) => ({ top: ch * (height + gap), height }));
}

function labelLanes(ctx, laneList) {
  if (laneList.length !== 2) return;
  ctx.fillStyle = "#e5e7eb";
  ctx.font = `${Math.round(12 * (window.devicePixelRatio || 1))}px sans-serif`;
  ctx.textBaseline = "top";
  laneList.forEach(({ top }, ch) => ctx.fillText(ch === 0 ? "L" : "R", 6, top + 4));
}

export function drawWaveform(canvas, buffer) {
  const ctx = fit(canvas);
  const laneList = lanes(ctx, buffer.numberOfChannels);
  const columns = canvas.width;
  ctx.fillStyle = WAVE;
  laneList.forEach(({ top, height }, ch) => {
    const samples = buffer.getChannelData(ch);
    const perColumn = samples.length / columns;
    const half = (height - 1) / 2; // -1..1 spans the lane's rows exactly, both ends included
    const mid = top + half;
    for (let x = 0; x < columns; x++) {
      let low = Infinity;
      let high = -Infinity;
      const end = Math.min(samples.length, Math.ceil((x + 1) * perColumn));
      for (let i = Math.floor(x * perColumn); i < end; i++) {
        if (samples[i] < low) low = samples[i];
        if (samples[i] > high) high = samples[i];
      }
      const y0 = Math.floor(mid - Math.min(1, high) * half);
      const y1 = Math.ceil(mid - Math.max(-1, low) * half);
      ctx.fillRect(x, y0, 1, y1 - y0 + 1);
    }
  });
  labelLanes(ctx, laneList);
}

// In-place iterative radix-2 FFT of (re, im); length a power of two.
export function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) { // bit-reversal permutation
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let size = 2; size <= n; size <<= 1) {
    const step = (-2 * Math.PI) / size;
    for (let start = 0; start < n; start += size) {
      for (let k = 0; k < size / 2; k++) {
        const wr = Math.cos(step * k);
        const wi = Math.sin(step * k);
        const a = start + k;
        const b = a + size / 2;
        const tr = re[b] * wr - im[b] * wi;
        const ti = re[b] * wi + im[b] * wr;
        re[b] = re[a] - tr;
        im[b] = im[a] - ti;
        re[a] += tr;
        im[a] += ti;
      }
    }
  }
}

// dB magnitudes, [column][bin] flattened, of Hann-windowed frames spread evenly over `samples`.
function spectrum(samples, columns) {
  const bins = FFT_SIZE / 2;
  const out = new Float32Array(columns * bins);
  const hann = Float32Array.from({ length: FFT_SIZE }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT_SIZE));
  const re = new Float32Array(FFT_SIZE);
  const im = new Float32Array(FFT_SIZE);
  const hop = Math.max(0, samples.length - FFT_SIZE) / Math.max(1, columns - 1);
  for (let c = 0; c < columns; c++) {
    const start = Math.floor(c * hop);
    for (let i = 0; i < FFT_SIZE; i++) re[i] = (samples[start + i] || 0) * hann[i];
    im.fill(0);
    fft(re, im);
    for (let k = 0; k < bins; k++) out[c * bins + k] = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-12);
  }
  return out;
}

// Dark blue -> purple -> orange -> pale yellow: 256 colours for 0..1.
const STOPS = [[17, 24, 39], [72, 22, 120], [190, 45, 100], [250, 140, 40], [252, 240, 170]];
const PALETTE = Array.from({ length: 256 }, (_, n) => {
  const x = (n / 255) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  return STOPS[i].map((v, j) => Math.round(v + (STOPS[i + 1][j] - v) * (x - i)));
});
const color = (t) => PALETTE[Math.round(Math.min(1, Math.max(0, t)) * 255)];

export function drawSpectrogram(canvas, buffer) {
  const ctx = fit(canvas);
  const laneList = lanes(ctx, buffer.numberOfChannels);
  const columns = canvas.width;
  const bins = FFT_SIZE / 2;
  const spectra = laneList.map((_, ch) => spectrum(buffer.getChannelData(ch), columns));
  // The scale is set by the loudest bin above 0 Hz: a DC offset is no music and would darken the rest.
  let loudest = -Infinity;
  for (const s of spectra) for (let i = 0; i < s.length; i++) if (i % bins && s[i] > loudest) loudest = s[i];
  const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
  laneList.forEach(({ top, height }, ch) => {
    for (let y = 0; y < height; y++) {
      const bin = Math.min(bins - 1, Math.floor(((height - 1 - y) / height) * bins)); // low frequencies at the bottom
      for (let x = 0; x < columns; x++) {
        const [r, g, b] = color(1 - (loudest - spectra[ch][x * bins + bin]) / DB_RANGE);
        const p = ((top + y) * canvas.width + x) * 4;
        image.data[p] = r;
        image.data[p + 1] = g;
        image.data[p + 2] = b;
        image.data[p + 3] = 255;
      }
    }
  });
  ctx.putImageData(image, 0, 0);
  labelLanes(ctx, laneList);
}

// Draw both pictures now and again whenever the canvases change size (rotation, window resize).
let shown = null;
let redraw = 0;
const observer = new ResizeObserver(() => {
  clearTimeout(redraw); // while a window is being dragged wider, draw once it rests
  redraw = setTimeout(() => shown && drawAll(shown), 150);
});

function drawAll({ buffer, waveform, spectrogram }) {
  drawWaveform(waveform, buffer);
  drawSpectrogram(spectrogram, buffer);
}

export function showPictures(buffer, waveform, spectrogram) {
  shown = { buffer, waveform, spectrogram };
  drawAll(shown);
  observer.observe(waveform);
}

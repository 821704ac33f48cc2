// Hear a prediction while it generates: follow its `urls.stream` (Server-Sent Events), fetch each
// `output` segment as it is announced and schedule it right after the previous one, so that the
// segments play as one sound. The URL carries its own credential (`sig`): EventSource sends no
// Authorization header.

export class StreamPlayer {
  constructor(onSegment) {
    this.onSegment = onSegment; // called with the number of segments scheduled so far
    this.context = null;
    this.source = null;
  }

  // Ask for the audio context inside the click that starts a prediction: browsers let a page
  // start sound only after a user gesture.
  unlock() {
    if (!this.context) this.context = new AudioContext({ sampleRate: 32000 });
    if (this.context.state === "suspended") this.context.resume();
  }

  play(streamUrl) {
    this.stop();
    this.unlock();
    const context = this.context;
    const source = (this.source = new EventSource(streamUrl));
    let playAt = 0;
    let scheduled = 0;
    let inOrder = Promise.resolve();
    this.nodes = [];
    source.addEventListener("output", (event) => {
      const bytes = fetch(event.data).then((response) => response.arrayBuffer()); // download at once
      inOrder = inOrder.then(async () => { // play in order
        if (this.source !== source) return;
        const buffer = await context.decodeAudioData(await bytes);
        const node = new AudioBufferSourceNode(context, { buffer });
        node.connect(context.destination);
        playAt = Math.max(playAt, context.currentTime + 0.1);
        node.start(playAt);
        playAt += buffer.duration;
        this.nodes.push(node);
        this.onSegment(++scheduled);
      }).catch(() => {}); // a segment that fails to play leaves a gap, never a broken page
    });
    source.addEventListener("done", () => source.close());
    source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) source.close(); });
  }

  // The finished file takes over (or the prediction was canceled): silence what is still queued.
  stop() {
    if (this.source) this.source.close();
    this.source = null;
    for (const node of this.nodes || []) {
      try { node.stop(); } catch { /* not started yet or already ended */ }
    }
    this.nodes = [];
  }
}

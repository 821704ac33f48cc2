// The official npm `replicate` client against a local musicgen-local server.
// Usage: node client.mjs <action> '<json args>'; prints one JSON line with what it observed.
import http from "node:http";
import { readFileSync } from "node:fs";
import Replicate, { parseProgressFromLogs, validateWebhook } from "replicate";

const [action, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs);
const replicate = new Replicate({ auth: args.token, baseUrl: `${args.baseUrl}/v1` });
const ref = `meta/musicgen:${args.version}`;

async function run() {
  // The seed's own call, plus a progress callback to see what parseProgressFromLogs reads.
  const progress = [];
  const input = { ...args.input };
  if (args.melodyPath) input.input_audio = readFileSync(args.melodyPath); // uploaded via POST /files
  const seen = (p) => p.logs && progress.push(parseProgressFromLogs(p.logs));
  const output = await replicate.run(ref, { input }, seen);
  const [latest] = (await replicate.predictions.list()).results;
  return { output: String(output), progress, latest };
}

function listenOnce() {
  return new Promise((resolve) => {
    let deliveries = [];
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        deliveries.push({ headers: req.headers, body });
        res.end("ok");
      });
    });
    server.listen(0, "127.0.0.1", () => resolve({ server, deliveries, port: server.address().port }));
  });
}

async function webhook() {
  const { server, deliveries, port } = await listenOnce();
  const prediction = await replicate.predictions.create({
    version: args.version,
    input: args.input,
    webhook: `http://127.0.0.1:${port}/hook`,
    webhook_events_filter: ["completed"],
  });
  const { key } = await replicate.webhooks.default.secret.get();
  const deadline = Date.now() + 120000;
  while (deliveries.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 1000)); // would catch an unfiltered late event
  server.close();
  const valid = [];
  for (const d of deliveries) valid.push(await validateWebhook({ headers: d.headers, body: d.body }, key));
  const tampered = deliveries.length
    ? await validateWebhook({ headers: deliveries[0].headers, body: deliveries[0].body + " " }, key)
    : null;
  return { created: prediction, statuses: deliveries.map((d) => JSON.parse(d.body).status), valid, tampered };
}

async function badToken() {
  try {
    await replicate.predictions.list();
    return { error: null };
  } catch (e) {
    return { error: String(e.message), status: e.response?.status };
  }
}

async function stream() {
  // replicate.stream() as a user writes it; each segment read back through the client's own FileOutput
  const seen = [];
  try {
    for await (const event of replicate.stream(ref, { input: args.input })) {
      const item = { event: event.event, id: event.id };
      if (event.event === "output") {
        const bytes = new Uint8Array(await (await event.data.blob()).arrayBuffer());
        Object.assign(item, { type: event.data.constructor.name, url: String(event.data), bytes: bytes.length,
                              head: new TextDecoder().decode(bytes.slice(0, 4)) });
      } else {
        item.data = event.data;
      }
      seen.push(item);
    }
    return { seen, error: null };
  } catch (e) {
    return { seen, error: String(e.message) };
  }
}

async function train() {
  // As the Node client's README has it: upload the dataset, then pass its URL (trainings.create sends input as is)
  await replicate.models.create(args.owner, args.name, { visibility: "private", hardware: "cpu" });
  const file = await replicate.files.create(readFileSync(args.datasetPath)); // named buffer_...: read by content
  const input = { ...args.trainingInput, dataset_path: file.urls.get };
  let training = await replicate.trainings.create("meta", "musicgen", args.version,
                                                  { destination: `${args.owner}/${args.name}`, input });
  const deadline = Date.now() + 300000;
  while (!["succeeded", "failed", "canceled"].includes(training.status) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    training = await replicate.trainings.get(training.id);
  }
  if (training.status !== "succeeded") return { training, output: null };
  const output = await replicate.run(training.output.version, { input: args.input });
  return { training, output: String(output) };
}

async function loop() {
  // andreasjansson/musicgen-looper, as its clients call it: an object of variation_NN files.
  const output = await replicate.run(`andreasjansson/musicgen-looper:${args.version}`, { input: args.input });
  return { output: Object.fromEntries(Object.entries(output).map(([name, file]) => [name, String(file)])) };
}

async function deployment() {
  // One deployment's life as the client's README has it: create, predict, move to a new version, predict, delete.
  const seen = { hardware: await replicate.hardware.list(), account: await replicate.accounts.current() };
  const { username } = seen.account;
  seen.create = await replicate.deployments.create({
    name: args.name, model: "meta/musicgen", version: args.version, hardware: "cpu", min_instances: 1, max_instances: 1,
  });
  seen.predict = await replicate.deployments.predictions.create(username, args.name, { input: args.input, wait: true });
  seen.update = await replicate.deployments.update(username, args.name, { version: args.tuned });
  seen.predictAfterUpdate = await replicate.deployments.predictions.create(username, args.name,
                                                                          { input: args.input, wait: 60 });
  seen.list = (await replicate.deployments.list()).results.map((d) => d.name);
  seen.search = (await replicate.models.search(args.search)).results.map((m) => `${m.owner}/${m.name}`);
  seen.delete = await replicate.deployments.delete(username, args.name);
  try {
    await replicate.deployments.get(username, args.name);
    seen.getAfterDelete = "found";
  } catch (e) {
    seen.getAfterDelete = e.response?.status;
  }
  try { // Prefer: wait=n past 60 s is refused, not silently cut
    await replicate.deployments.predictions.create(username, "any", { input: args.input, wait: 61 });
  } catch (e) {
    seen.waitTooLong = { status: e.response?.status, message: String(e.message) };
  }
  return seen;
}

const actions = { run, webhook, badToken, stream, train, loop, deployment };
console.log(JSON.stringify(await actions[action]()));

// The soak of `wsx serve` (run by scripts/soak): third-party clients of three
// front-ends against one server it starts, bounded in time.
//
// 1. Burst: CONNS native WebSockets opened at once; each must open or be refused with
//    an HTTP status within 60 s (none may hang).
// 2. Churn for SECONDS: CONNS subscribers spread over native (ws), STOMP
//    (@stomp/stompjs) and Socket.IO (socket.io-client), each on one of the soak
//    channels; 5% of them reconnect every second and resubscribe recovering from the
//    last offset they saw; HTTP API publishers at a steady rate; a few slow consumers
//    (they stop reading a busy channel and are dropped by the server) and a few
//    malformed clients (garbage frames, closed by the server) come and go.
// 3. The end: publishing stops, every well-behaved subscriber (all but the slow and
//    malformed ones) must have every publication of its channel exactly once, in order.
//
// Every second the server's RSS and open file descriptors, the connections and the
// deliveries are sampled; every 10 s the delivery latency's p50/p99 (publisher's clock
// to subscriber, one machine). Written to OUT/samples.csv and OUT/summary.json; the
// checks (nothing lost, nothing hung, RSS and descriptors flat after warm-up, p99
// stable) decide the exit code.
//
// usage: node soak.mjs WSX_BIN OUT_DIR CONNS SECONDS
import fs from 'node:fs';
import path from 'node:path';
import { fork, spawn } from 'node:child_process';
import net from 'node:net';
import WebSocket from 'ws';

const [bin, out, connsArg, secondsArg] = process.argv.slice(2);
const CONNS = Number(connsArg);
const SECONDS = Number(secondsArg);
const KEY = 'soak-api-key-0123456789';
const CHANNELS = Math.max(10, Math.round(CONNS / 100));
const RATE = 50; // publications per second, all channels (each reaches CONNS / CHANNELS subscribers)
const CHURN = 0.05; // of the subscribers reconnect every second
const SLOW = Math.max(2, Math.round(CONNS / 1000));
const MALFORMED = Math.max(2, Math.round(CONNS / 1000));
fs.mkdirSync(out, { recursive: true });
const log = (...a) => console.error(new Date().toISOString().slice(11, 19), ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the server ----
const port = await new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const base = `127.0.0.1:${port}`;
const config = path.join(out, 'soak.toml');
fs.writeFileSync(config, '[namespaces.soak]\nhistory_size = 1000\nhistory_ttl = "60s"\n[namespaces.firehose]\n');
const server = spawn(bin, [
  'serve', '--listen', base, '--api-key', KEY, '--demo', 'off', '--config', config,
  '--backlog', String(Math.max(1024, CONNS * 2)),
  '--max-connections', String(CONNS * 2), '--max-tcp-connections', String(CONNS * 3),
  '--stomp-heart-beat', '0,0', '--log-format', 'text',
  // SOAK_SERVER_ARGS="--compression off" (say): to tell which setting a trend comes from.
  ...(process.env.SOAK_SERVER_ARGS ? process.env.SOAK_SERVER_ARGS.split(' ') : []),
], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
let serverLog = '';
server.stderr.on('data', (d) => { serverLog = (serverLog + d).slice(-20000); });
for (let i = 0; ; i++) {
  try { if ((await fetch(`http://${base}/healthz`)).ok) break; } catch {}
  if (i > 200) throw new Error(`the server did not start: ${serverLog}`);
  await sleep(50);
}
log(`server pid ${server.pid} on ${base}; ${CONNS} connections, ${SECONDS} s, ${CHANNELS} channels, ${RATE} publications/s`);

async function api(method, body) {
  const r = await fetch(`http://${base}/api/${method}`, {
    method: 'POST', headers: { Authorization: `apikey ${KEY}` }, body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method}: ${r.status} ${await r.text()}`);
  return (await r.json()).result;
}

function proc() {
  const status = fs.readFileSync(`/proc/${server.pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  const fds = fs.readdirSync(`/proc/${server.pid}/fd`).length;
  return { rss, fds };
}

// ---- 1. burst ----
async function burst() {
  const started = Date.now();
  const outcomes = { open: 0, refused: {}, failed: {}, hung: 0 };
  const sockets = [];
  await Promise.all(Array.from({ length: CONNS }, () => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${base}/connection/websocket`);
    sockets.push(ws);
    const timer = setTimeout(() => { outcomes.hung += 1; ws.terminate(); resolve(); }, 60000);
    const done = (f) => { clearTimeout(timer); f(); resolve(); };
    ws.on('open', () => done(() => { outcomes.open += 1; }));
    ws.on('unexpected-response', (_, res) => done(() => { outcomes.refused[res.statusCode] = (outcomes.refused[res.statusCode] || 0) + 1; ws.terminate(); }));
    ws.on('error', (e) => done(() => { outcomes.failed[e.code || e.message] = (outcomes.failed[e.code || e.message] || 0) + 1; }));
  })));
  outcomes.seconds = (Date.now() - started) / 1000;
  outcomes.fds_at_peak = proc().fds;
  for (const ws of sockets) ws.terminate();
  log('burst', JSON.stringify(outcomes));
  return outcomes;
}

// ---- 2. churn ----
// The clients' counts, summed over the client processes' last reports.
const stats = {
  delivered: 0, violations: 0, unrecovered: 0, reconnects: 0, firstProblem: null,
  slowDropped: 0, malformedClosed: 0, latencies: [], live: 0, behind: null, example: null,
};

// A slow consumer: subscribes to the firehose and stops reading; the server drops it
// (3008 slow consumer), and it comes back to do it again.
function slowConsumer() {
  if (!running) return;
  // Uncompressed, so that the firehose's bytes fill the buffers (they compress well).
  const ws = new WebSocket(`ws://${base}/connection/websocket`, { perMessageDeflate: false });
  ws.on('open', () => {
    ws.send(JSON.stringify({ id: 1, connect: {} }));
    ws.send(JSON.stringify({ id: 2, subscribe: { channel: 'firehose:all' } }));
    setTimeout(() => ws.pause(), 200);
    // The server drops it (its queue overflows, its writes time out); paused, it cannot
    // tell: it gives up after 45 s and comes back. The server's count is in /metrics.
    setTimeout(() => ws.terminate(), 45000);
  });
  ws.on('close', () => setTimeout(slowConsumer, 1000));
  ws.on('error', () => {});
}

// A malformed client: garbage instead of commands (native) or frames (STOMP).
function malformed(i) {
  if (!running) return;
  const stomp = i % 2 === 1;
  const ws = stomp ? new WebSocket(`ws://${base}/stomp`, ['v12.stomp']) : new WebSocket(`ws://${base}/connection/websocket`);
  ws.on('open', () => {
    let k = 0;
    const t = setInterval(() => {
      if (ws.readyState !== 1 || k++ > 50) return clearInterval(t);
      ws.send(stomp ? 'GARBAGE\nx\n\n\0' : '{"id": "nonsense", ');
    }, 50);
  });
  ws.on('close', () => { stats.malformedClosed += 1; setTimeout(() => malformed(i), 2000); });
  ws.on('error', () => {});
}

let running = true;
const burstResult = await burst();
await sleep(2000);

const WORKERS = Math.max(1, Math.min(4, Math.round(CONNS / 2500)));
const wanted = CONNS - SLOW - MALFORMED;
const reports = new Array(WORKERS).fill(null);
const workers = [];
log(`opening ${wanted} subscribers in ${WORKERS} client process(es)`);
await Promise.all(Array.from({ length: WORKERS }, (_, w) => new Promise((resolve, reject) => {
  const from = Math.floor(wanted * w / WORKERS);
  const to = Math.floor(wanted * (w + 1) / WORKERS);
  const child = fork(new URL('./clients.mjs', import.meta.url), [], {
    env: { ...process.env, SOAK_WORKER: JSON.stringify({ base, channels: CHANNELS, from, to, churn: CHURN }) },
    execArgv: ['--max-old-space-size=4096'],
  });
  workers.push(child);
  child.on('message', (m) => {
    if (m.type === 'ready') resolve();
    if (m.type === 'report') {
      stats.latencies.push(...m.latencies);
      reports[w] = m;
      const sum = (k) => reports.reduce((a, r) => a + (r ? r[k] || 0 : 0), 0);
      for (const k of ['delivered', 'violations', 'unrecovered', 'reconnects', 'live']) stats[k] = sum(k);
      stats.firstProblem = stats.firstProblem || m.firstProblem;
      if (reports.every((r) => r && r.behind !== undefined)) {
        stats.behind = sum('behind');
        stats.example = reports.map((r) => r.example).find(Boolean) || null;
      }
    }
  });
  child.on('exit', (code) => { if (running) reject(new Error(`client process ${w} exited: ${code}`)); });
})));
for (let i = 0; i < SLOW; i++) slowConsumer();
for (let i = 0; i < MALFORMED; i++) malformed(i);
log('subscribed; churning');

let published = 0;
let pubFailures = 0;
let seq = 0;
const publisher = setInterval(() => {
  const per = RATE / 20;
  for (let k = 0; k < per; k++) {
    const ch = `soak:${seq++ % CHANNELS}`;
    api('publish', { channel: ch, data: { t: Date.now() } }).then(() => { published += 1; }, () => { pubFailures += 1; });
  }
  // The firehose: large publications the slow consumers cannot keep up with.
  api('publish', { channel: 'firehose:all', data: { t: Date.now(), pad: 'x'.repeat(32000) } }).catch(() => {});
}, 50);

const samples = [];
const started = Date.now();
let lastDelivered = 0;
let windowLat = [];
const sampler = setInterval(() => {
  const { rss, fds } = proc();
  const t = (Date.now() - started) / 1000;
  const delivered = stats.delivered - lastDelivered;
  lastDelivered = stats.delivered;
  windowLat.push(...stats.latencies.splice(0));
  let p50 = '', p99 = '';
  if (Math.round(t) % 10 === 0 && windowLat.length) {
    windowLat.sort((a, b) => a - b);
    p50 = windowLat[Math.floor(windowLat.length * 0.5)];
    p99 = windowLat[Math.min(windowLat.length - 1, Math.floor(windowLat.length * 0.99))];
    windowLat = [];
  }
  const live = stats.live;
  samples.push({ t: Math.round(t), rss, fds, live, delivered, p50, p99 });
  if (Math.round(t) % 30 === 0) log(`t=${Math.round(t)}s rss=${(rss / 1024).toFixed(1)}MiB fds=${fds} live=${live} delivered/s=${delivered} p99=${p99}ms violations=${stats.violations}`);
}, 1000);

await sleep(SECONDS * 1000);
for (const w of workers) w.send({ type: 'stop-churn' });
clearInterval(publisher);
log('publishing stopped; waiting for every subscriber to catch up');
await sleep(1000);

// ---- 3. the end ----
const finals = {};
for (let c = 0; c < CHANNELS; c++) finals[`soak:${c}`] = (await api('history', { channel: `soak:${c}`, limit: 0 })).offset;
for (const w of workers) w.send({ type: 'finals', finals });
const deadline = Date.now() + 60000;
stats.behind = null;
while ((stats.behind === null || stats.behind > 0) && Date.now() < deadline) await sleep(500);
running = false;
clearInterval(sampler);
for (const w of workers) w.send({ type: 'exit' });
const total = Object.values(finals).reduce((a, b) => a + b, 0);

const metrics = await (await fetch(`http://${base}/metrics`)).text();
stats.slowDropped = Number((/^wsx_slow_consumer_disconnects_total (\d+)/m.exec(metrics) || [0, 0])[1]);

// ---- checks ----
const after = samples.filter((s) => s.t >= SECONDS * 0.25);
const median = (xs) => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)] || 0; };
const q2 = after.filter((s) => s.t < SECONDS * 0.5);
const q4 = after.filter((s) => s.t >= SECONDS * 0.75);
const p99s = samples.filter((s) => s.p99 !== '' && s.t >= SECONDS * 0.25).map((s) => s.p99);
const summary = {
  connections: CONNS, seconds: SECONDS, channels: CHANNELS, rate: RATE,
  burst: burstResult,
  published, publish_failures: pubFailures, publications_in_streams: total,
  delivered: stats.delivered, reconnects: stats.reconnects,
  violations: stats.violations, unrecovered: stats.unrecovered, first_problem: stats.firstProblem,
  behind_at_end: stats.behind,
  slow_consumers_dropped: stats.slowDropped, malformed_closed: stats.malformedClosed,
  rss_mib: { warm: median(q2.map((s) => s.rss)) / 1024, end: median(q4.map((s) => s.rss)) / 1024, max: Math.max(...samples.map((s) => s.rss)) / 1024 },
  fds: { warm: median(q2.map((s) => s.fds)), end: median(q4.map((s) => s.fds)) },
  p99_ms: { median: median(p99s), max: Math.max(0, ...p99s) },
};
const failures = [];
if (burstResult.hung) failures.push(`${burstResult.hung} burst connections hung`);
if (Object.keys(burstResult.failed).length) failures.push(`burst connections failed without a status: ${JSON.stringify(burstResult.failed)}`);
if (stats.violations) failures.push(`${stats.violations} order violations: ${stats.firstProblem}`);
if (stats.behind !== 0) failures.push(`${stats.behind} subscribers did not catch up (e.g. ${stats.example})`);
if (published < RATE * SECONDS * 0.5) failures.push(`publishing fell behind: ${published}`);
if (summary.rss_mib.end > summary.rss_mib.warm * 1.3 + 8) failures.push(`RSS grew: ${JSON.stringify(summary.rss_mib)}`);
if (summary.fds.end > summary.fds.warm * 1.1 + 50) failures.push(`descriptors grew: ${JSON.stringify(summary.fds)}`);
if (summary.p99_ms.max > Math.max(5 * summary.p99_ms.median, summary.p99_ms.median + 250)) failures.push(`p99 unstable: ${JSON.stringify(summary.p99_ms)}`);
if (!stats.slowDropped) failures.push('no slow consumer was dropped');
if (!stats.malformedClosed) failures.push('no malformed client was closed');
summary.failures = failures;
fs.writeFileSync(path.join(out, 'summary.json'), JSON.stringify(summary, null, 2));
fs.writeFileSync(path.join(out, 'samples.csv'), ['t,rss_kib,fds,live,delivered_per_s,p50_ms,p99_ms',
  ...samples.map((s) => [s.t, s.rss, s.fds, s.live, s.delivered, s.p50, s.p99].join(','))].join('\n') + '\n');
console.log(JSON.stringify(summary, null, 2));
server.kill('SIGINT');
process.exit(failures.length ? 1 : 0);

// Polling clients behind a load balancer without sticky sessions: a round-robin HTTP
// proxy (every request to the next node) in front of two `wsx serve` nodes on one
// Redis. socket.io-client over long-polling, and the native protocol over
// long-polling, each connect, subscribe and receive what is published; every poll or
// send that lands on the node not holding the session is forwarded to the one that does.
// usage: node polling.mjs API_KEY ADDR_A ADDR_B
import assert from 'node:assert/strict';
import http from 'node:http';
import { io } from 'socket.io-client';
import SockJS from 'sockjs-client';

const [key, A, B] = process.argv.slice(2);
const backends = [A, B];
const served = [0, 0];
let next = 0;
const within = (p, what, ms = 10000) => Promise.race([
  p,
  new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)),
]);

// The load balancer: each request to the next node, in turn.
const lb = http.createServer((req, res) => {
  const i = next++ % backends.length;
  served[i] += 1;
  const [host, port] = backends[i].split(':');
  const up = http.request({ host, port, path: req.url, method: req.method, headers: req.headers, agent: false }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', () => { res.writeHead(502); res.end(); });
  req.pipe(up);
});
await new Promise((r) => lb.listen(0, '127.0.0.1', r));
const LB = `127.0.0.1:${lb.address().port}`;

async function api(method, body) {
  const r = await fetch(`http://${A}/api/${method}`, { method: 'POST', headers: { Authorization: `apikey ${key}` }, body: JSON.stringify(body) });
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).result;
}

// socket.io-client, long-polling only.
const sio = io(`http://${LB}`, { transports: ['polling'], reconnection: false });
const got = [];
sio.on('publication', (channel, data) => got.push(data.n));
await within(new Promise((r, j) => { sio.once('connect', r); sio.once('connect_error', j); }), 'socket.io connect');
const sub = await sio.timeout(10000).emitWithAck('subscribe', 'lb');
assert.ok(sub.result, JSON.stringify(sub));
for (let n = 1; n <= 5; n++) await api('publish', { channel: 'lb', data: { n } });
await within((async () => { while (got.length < 5) await new Promise((r) => setTimeout(r, 20)); })(), 'socket.io publications');
assert.deepEqual(got, [1, 2, 3, 4, 5]);
const ack = await sio.timeout(10000).emitWithAck('publish', 'lb', { n: 6 });
assert.ok(ack.result && ack.result.offset === 6, JSON.stringify(ack));
sio.close();
console.error('ok socket.io over long-polling across nodes');

// The native protocol over long-polling.
const open = await fetch(`http://${LB}/connection/poll`, { method: 'POST' });
assert.equal(open.status, 200);
const { session } = await open.json();
const send = (lines) => fetch(`http://${LB}/connection/poll/${session}`, { method: 'POST', body: lines.join('\n') });
assert.equal((await send(['{"id":1,"connect":{}}', '{"id":2,"subscribe":{"channel":"lb","recover":true,"offset":6,"epoch":"x"}}'])).status, 204);
const seen = [];
const poll = async () => {
  const r = await fetch(`http://${LB}/connection/poll/${session}`);
  assert.equal(r.status, 200, await r.clone().text());
  for (const m of await r.json()) seen.push(m);
};
await within((async () => { while (!seen.some((m) => m.id === 2)) await poll(); })(), 'native subscribe reply');
await api('publish', { channel: 'lb', data: { n: 7 } });
await within((async () => { while (!seen.some((m) => m.push && m.push.pub)) await poll(); })(), 'native publication');
const pub = seen.find((m) => m.push && m.push.pub).push.pub;
assert.deepEqual([pub.offset, pub.data.n], [7, 7]);
console.error('ok native long-polling across nodes');

// sockjs-client (its session ids are its own: the nodes find the session's node in
// Redis) over each HTTP transport, carrying the native protocol.
for (const transport of ['xhr-streaming', 'xhr-polling']) {
  const sock = new SockJS(`http://${LB}/connection/sockjs`, null, { transports: [transport] });
  const inbox = [];
  let wake = null;
  sock.onmessage = (e) => { inbox.push(JSON.parse(e.data)); if (wake) wake(); };
  await within(new Promise((r, j) => { sock.onopen = r; sock.onclose = (e) => j(new Error(`closed ${e.code} ${e.reason}`)); }), `${transport} open`);
  const until = (pred, what) => within((async () => {
    while (!inbox.some(pred)) await new Promise((r) => { wake = r; });
  })(), what);
  sock.send('{"id":1,"connect":{}}');
  sock.send('{"id":2,"subscribe":{"channel":"lb"}}');
  await until((m) => m.id === 2, `${transport} subscribe reply`);
  const before = served.slice();
  await api('publish', { channel: 'lb', data: { n: transport } });
  await until((m) => m.push && m.push.pub && m.push.pub.data.n === transport, `${transport} publication`);
  assert.equal(sock.transport, transport);
  sock.close();
  console.error(`ok sockjs-client ${transport} across nodes (requests per node since: ${served[0] - before[0]}, ${served[1] - before[1]})`);
}

assert.ok(served[0] > 3 && served[1] > 3, `both nodes took requests: ${served}`);
lb.close();
console.log('OK');
process.exit(0);

// @stomp/stompjs (the registry's package) in Node against `wsx serve`'s /stomp:
// connect, heart-beats, JSON / text / binary bodies, receipts, ack modes,
// transactions, reconnect. Exits non-zero at the first failed assertion.
// usage: node stompjs_node.mjs ws://127.0.0.1:PORT/stomp
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import assert from 'node:assert/strict';

const url = process.argv[2];
const bound = (ms, what) =>
  new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms));
const within = (p, what, ms = 5000) => Promise.race([p, bound(ms, what)]);

function client(extra = {}) {
  const c = new Client({
    webSocketFactory: () => new WebSocket(url, c.stompVersions.protocolVersions()),
    connectHeaders: { login: 'guest', passcode: 'guest' },
    reconnectDelay: 0,
    debug: () => {},
    ...extra,
  });
  return c;
}

function connect(c) {
  return within(
    new Promise((resolve, reject) => {
      c.onConnect = (frame) => resolve(frame);
      c.onStompError = (frame) => reject(new Error(`ERROR ${frame.headers.message}`));
      c.activate();
    }),
    'connect',
  );
}

/** Messages of a subscription, awaited one at a time. */
function inbox(c, destination, headers = {}) {
  const queue = [];
  const waiting = [];
  const sub = c.subscribe(destination, (m) => {
    const w = waiting.shift();
    if (w) w(m);
    else queue.push(m);
  }, headers);
  return {
    sub,
    next: (what = destination) =>
      within(new Promise((resolve) => {
        const m = queue.shift();
        if (m) resolve(m);
        else waiting.push(resolve);
      }), what),
    pending: () => queue.length,
  };
}

const receipt = (c, id) => within(new Promise((resolve) => c.watchForReceipt(id, resolve)), `receipt ${id}`);
const results = [];
const ok = (name) => { results.push(name); console.log(`ok ${name}`); };

// Connect: version 1.2 over v12.stomp, the server's heart-beat answer.
const a = client({ heartbeatIncoming: 1000, heartbeatOutgoing: 1000 });
const connected = await connect(a);
assert.equal(connected.headers.version, '1.2');
assert.equal(connected.headers['heart-beat'], '1000,1000');
assert.equal(a.webSocket.protocol, 'v12.stomp');
assert.match(connected.headers.server, /^wsx\//);
ok('connect');

// Bodies: JSON, text, binary (not UTF-8: it must arrive in a binary WebSocket message).
const r1 = receipt(a, 'sub-1');
const topic = inbox(a, '/topic/node:bodies', { receipt: 'sub-1' });
await r1;
a.publish({ destination: '/topic/node:bodies', body: JSON.stringify({ n: 1 }), headers: { 'content-type': 'application/json', 'x-trace': 'abc' } });
a.publish({ destination: '/topic/node:bodies', body: 'plain text' });
const bin = new Uint8Array([0xff, 0x00, 0x01, 0xfe]);
a.publish({ destination: '/topic/node:bodies', binaryBody: bin, headers: { 'content-type': 'application/octet-stream' } });
let m = await topic.next('json');
assert.deepEqual(JSON.parse(m.body), { n: 1 });
assert.equal(m.headers['content-type'], 'application/json');
assert.equal(m.headers['x-trace'], 'abc', 'custom headers kept');
assert.equal(m.headers['wsx-offset'], '1');
m = await topic.next('text');
assert.equal(m.body, 'plain text');
m = await topic.next('binary');
assert.deepEqual(Array.from(m.binaryBody), Array.from(bin));
assert.equal(m.headers['content-type'], 'application/octet-stream');
ok('bodies');

// Receipts for SEND.
const rs = receipt(a, 'send-1');
a.publish({ destination: '/topic/node:bodies', body: 'r', headers: { receipt: 'send-1' } });
const rf = await rs;
assert.equal(rf.headers['receipt-id'], 'send-1');
await topic.next('receipted');
ok('receipts');

// Heart-beats: idle for 3 s with 1 s beats both ways, still connected.
await new Promise((r) => setTimeout(r, 3000));
assert.equal(a.connected, true);
ok('heart-beats');

// Ack modes on a queue: client-individual, one NACKed message comes back redelivered.
const rq = receipt(a, 'q-sub');
const q = inbox(a, '/queue/node-jobs', { ack: 'client-individual', receipt: 'q-sub' });
await rq;
for (const i of [1, 2, 3]) a.publish({ destination: '/queue/node-jobs', body: `job${i}` });
const got = [await q.next(), await q.next(), await q.next()];
assert.deepEqual(got.map((x) => x.body), ['job1', 'job2', 'job3']);
got[0].ack();
got[1].nack();
got[2].ack();
const again = await q.next('redelivery');
assert.equal(again.body, 'job2');
assert.equal(again.headers.redelivered, 'true');
again.ack();
ok('ack-nack');

// Transactions: an aborted one sends nothing, a committed one sends its frames.
const tx1 = a.begin();
a.publish({ destination: '/topic/node:bodies', body: 'aborted', headers: { transaction: tx1.id } });
tx1.abort();
const tx2 = a.begin();
a.publish({ destination: '/topic/node:bodies', body: 'committed', headers: { transaction: tx2.id } });
tx2.commit();
m = await topic.next('committed');
assert.equal(m.body, 'committed');
ok('transactions');

// A second client on the same topic, and reconnection after the socket drops.
const b = client({ reconnectDelay: 200 });
let connects = 0;
const reconnected = within(new Promise((resolve) => {
  b.onConnect = () => {
    connects += 1;
    if (connects === 2) resolve();
  };
}), 'reconnect');
b.activate();
await within(new Promise((r) => { const t = setInterval(() => { if (connects === 1) { clearInterval(t); r(); } }, 20); }), 'first connect');
b.forceDisconnect();
await reconnected;
const rb = receipt(b, 'b-sub');
const bq = inbox(b, '/topic/node:bodies', { receipt: 'b-sub' });
await rb;
b.publish({ destination: '/topic/node:bodies', body: 'after reconnect' });
assert.equal((await bq.next('after reconnect')).body, 'after reconnect');
assert.equal((await topic.next('a sees it too')).body, 'after reconnect');
ok('reconnect');

await a.deactivate();
await b.deactivate();
console.log(`passed ${results.length}`);
process.exit(0);

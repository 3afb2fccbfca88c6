// Node `ws` client for the wsx interop tests: every case against a wsx echo server.
// usage: node node_client.mjs URL MODE [CAFILE]   (MODE: plain | deflate | deflate-nct)
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

const [url, mode, cafile] = process.argv.slice(2);
const SIZES = [0, 125, 126, 65535, 65536, 16 << 20];
const options = {
  maxPayload: 64 << 20,
  perMessageDeflate: mode === 'plain' ? false : {
    threshold: 0,
    serverNoContextTakeover: mode === 'deflate-nct',
    clientNoContextTakeover: mode === 'deflate-nct',
  },
  ca: cafile ? readFileSync(cafile) : undefined,
};

function open() {
  const ws = new WebSocket(url, ['superchat', 'chat'], options);
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift()(m); else queue.push(m);
  });
  ws.next = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
  ws.closed = new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  return new Promise((resolve, reject) => {
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
  });
}

const ws = await open();
assert.equal(ws.protocol, 'chat', 'the wsx server prefers chat');
// `ws.extensions` lists names only; the accepted parameters are in `_extensions`.
const pmd = ws._extensions['permessage-deflate'];
if (mode === 'plain') {
  assert.equal(ws.extensions, '');
} else {
  assert.equal(ws.extensions, 'permessage-deflate');
  const p = pmd.params;
  assert.equal(Boolean(p.server_no_context_takeover), mode === 'deflate-nct', JSON.stringify(p));
  assert.equal(Boolean(p.client_no_context_takeover), mode === 'deflate-nct', JSON.stringify(p));
}
for (const size of SIZES) {
  const text = Array.from({ length: size }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
  ws.send(text);
  let m = await ws.next();
  assert.equal(m.isBinary, false);
  assert.equal(m.data.toString(), text, `text ${size}`);
  const bin = Buffer.alloc(size, 0);
  for (let i = 0; i < size; i++) bin[i] = i % 251;
  ws.send(bin);
  m = await ws.next();
  assert.equal(m.isBinary, true);
  assert.ok(Buffer.compare(m.data, bin) === 0, `binary ${size}`);
}
// Fragmented both ways.
ws.send('Hel', { fin: false });
ws.send('lo κόσμε', { fin: true });
assert.equal((await ws.next()).data.toString(), 'Hello κόσμε');
ws.send('fragmented');
assert.equal((await ws.next()).data.toString(), 'fragmented κόσμε');
// Ping from us; ping from wsx (ws answers it by itself; the server records the pong).
const pong = new Promise((r) => ws.once('pong', r));
ws.ping('node-ping');
assert.equal((await pong).toString(), 'node-ping');
ws.send('ping from-wsx');
// Close started by the server.
ws.send('close 4001 bye from server');
const closed = await ws.closed;
assert.deepEqual(closed, { code: 4001, reason: 'bye from server' });
// Close started by us.
const ws2 = await open();
ws2.close(4002, 'bye from client');
const closed2 = await ws2.closed;
assert.equal(closed2.code, 4002);
console.log('OK');

// Fan-out to Node `ws` clients with and without permessage-deflate, against `wsx serve
// --max-deflate-contexts 1`: every client gets every publication intact; the ones that
// negotiated compression read far fewer bytes than were published; the second client
// asking for context takeover is answered with server_no_context_takeover.
//   node fanout_ws.mjs HOST:PORT API_KEY
import WebSocket from 'ws';

const [addr, key] = process.argv.slice(2);
const fail = (msg) => { console.error('FAIL', msg); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

const kinds = [
  ['shared-1', { serverNoContextTakeover: true }],
  ['shared-2', { serverNoContextTakeover: true }],
  ['own', {}],
  ['own-over-limit', {}],
  ['plain', false],
];
const COUNT = 5;
const pad = 'the same publication, compressed once for many; '.repeat(100);

function client([name, deflate]) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}/connection/websocket`, { perMessageDeflate: deflate });
    const got = [];
    let replies = 0;
    ws.on('upgrade', (res) => { ws.extHeader = res.headers['sec-websocket-extensions'] || ''; });
    ws.on('open', () => {
      ws.send(JSON.stringify({ id: 1, connect: {} }));
      ws.send(JSON.stringify({ id: 2, subscribe: { channel: 'deflate' } }));
    });
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id) {
        if (msg.error) reject(new Error(`${name}: ${JSON.stringify(msg.error)}`));
        if (++replies === 2) resolve({ name, ws, got, deflate });
        return;
      }
      if (msg.push && msg.push.pub) got.push(msg.push.pub.data);
    });
    ws.on('error', reject);
  });
}

const clients = [];
for (const k of kinds) clients.push(await client(k)); // in order: 'own' takes the one context
const before = clients.map((c) => c.ws._socket.bytesRead);
let published = 0;
for (let i = 0; i < COUNT; i++) {
  const body = JSON.stringify({ channel: 'deflate', data: { i, pad } });
  published += body.length;
  const res = await fetch(`http://${addr}/api/publish`, {
    method: 'POST', headers: { Authorization: `apikey ${key}` }, body,
  });
  if (res.status !== 200) fail(`publish: ${res.status}`);
}
const deadline = Date.now() + 10000;
while (clients.some((c) => c.got.length < COUNT)) {
  if (Date.now() > deadline) fail(`missing: ${clients.map((c) => `${c.name}=${c.got.length}`)}`);
  await new Promise((r) => setTimeout(r, 20));
}
for (const [n, c] of clients.entries()) {
  c.got.forEach((d, i) => { if (d.i !== i || d.pad !== pad) fail(`${c.name}: publication ${i} differs`); });
  const read = c.ws._socket.bytesRead - before[n];
  const compressed = c.deflate !== false;
  console.log(`${c.name}: ${read} bytes read for ${published} published; extensions: ${c.ws.extHeader || 'none'}`);
  if (compressed && read > published / 5) fail(`${c.name} was not sent compressed frames`);
  if (!compressed && read < published) fail(`${c.name} read less than was published`);
}
const ext = Object.fromEntries(clients.map((c) => [c.name, c.ws.extHeader]));
if (/server_no_context_takeover/.test(ext.own)) fail(`'own' should keep its context: ${ext.own}`);
if (!/server_no_context_takeover/.test(ext['own-over-limit'])) fail(`over the limit: ${ext['own-over-limit']}`);
if (!/server_no_context_takeover/.test(ext['shared-1'])) fail(`shared: ${ext['shared-1']}`);
clients.forEach((c) => c.ws.close());
console.log('OK passed');

// Node `ws` clients against `wsx serve`'s /echo (its connections on wsx::event_loop):
// with and without permessage-deflate, text and binary of every length class, a
// message over many reads, a fragmented one, a ping, many clients at once, and the
// close handshake with the client's code echoed.
//   node echo_ws.mjs HOST:PORT
import WebSocket from 'ws';

const [addr] = process.argv.slice(2);
const fail = (msg) => { console.error('FAIL', msg); process.exit(1); };
setTimeout(() => fail('timed out'), 30000).unref();

function open(deflate) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}/echo`, { perMessageDeflate: deflate });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function roundTrip(ws, data, opts = {}) {
  return new Promise((resolve) => {
    ws.once('message', (got, isBinary) => resolve({ got, isBinary }));
    ws.send(data, opts);
  });
}

async function exercise(name, deflate) {
  const ws = await open(deflate);
  const ext = ws.extensions || '';
  if (deflate && !ext.includes('permessage-deflate')) fail(`${name}: no deflate negotiated`);
  if (!deflate && ext) fail(`${name}: extensions ${ext}`);
  for (const size of [0, 125, 126, 65535, 65536, 900000]) {
    const text = 'abcdefghijklmnopqrstuvwxyz'.repeat(Math.ceil(size / 26)).slice(0, size);
    const t = await roundTrip(ws, text);
    if (t.isBinary || t.got.toString() !== text) fail(`${name}: text ${size}`);
    const bin = Buffer.alloc(size, 0).map((_, i) => i % 251);
    const b = await roundTrip(ws, bin);
    if (!b.isBinary || !Buffer.from(b.got).equals(bin)) fail(`${name}: binary ${size}`);
  }
  // A message in three fragments comes back whole.
  const whole = new Promise((resolve) => ws.once('message', (m) => resolve(m.toString())));
  ws.send('Hel', { fin: false });
  ws.send('lo ', { fin: false });
  ws.send('κόσμε', { fin: true });
  if ((await whole) !== 'Hello κόσμε') fail(`${name}: fragmented`);
  const pong = new Promise((resolve) => ws.once('pong', (d) => resolve(d.toString())));
  ws.ping('are you there');
  if ((await pong) !== 'are you there') fail(`${name}: pong`);
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve([code, reason.toString()])));
  ws.close(4001, 'done');
  const [code] = await closed;
  if (code !== 4001) fail(`${name}: close code ${code}`);
  console.log(`${name}: ok`);
}

await exercise('plain', false);
await exercise('deflate', true);
await exercise('deflate-nct', { serverNoContextTakeover: true, clientNoContextTakeover: true });

// 200 clients at once, each echoing its own messages in order.
const clients = await Promise.all(Array.from({ length: 200 }, () => open(false)));
await Promise.all(clients.map(async (ws, i) => {
  for (let k = 0; k < 20; k++) {
    const m = `client ${i} message ${k}`;
    const { got } = await roundTrip(ws, m);
    if (got.toString() !== m) fail(`client ${i}: got ${got} for ${m}`);
  }
  ws.close();
}));
console.log('OK passed');
process.exit(0);

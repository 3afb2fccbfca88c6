// A drain as Socket.IO and SockJS clients see it (`wsx serve --drain-window`): each is
// told to go at its point of the window in its own protocol's way, one its library
// reconnects from. socket.io-client: a transport close (not the server's `disconnect`,
// after which it would stay away), then reconnection attempts (refused while the node
// drains). sockjs-client (Node): close 1001. Then the node exits.
// usage: node clients.mjs API_KEY ADDR
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import SockJS from 'sockjs-client';

const [key, addr] = process.argv.slice(2);
const within = (p, what, ms = 15000) => Promise.race([
  p,
  new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)),
]);

const sio = io(`http://${addr}`, { transports: ['websocket'], reconnectionDelay: 200, reconnectionDelayMax: 400 });
await within(new Promise((r) => sio.once('connect', r)), 'socket.io connect');
const subscribed = await sio.timeout(5000).emitWithAck('subscribe', 'drain');
assert.ok(subscribed.result, JSON.stringify(subscribed));

const sock = new SockJS(`http://${addr}/connection/sockjs`, null, { transports: ['websocket'] });
await within(new Promise((r, j) => { sock.onopen = r; sock.onclose = (e) => j(new Error(`sockjs closed: ${e.code}`)); }), 'sockjs open');
sock.send(JSON.stringify({ id: 1, connect: {} }));
const sockClosed = new Promise((r) => { sock.onclose = (e) => r({ code: e.code, reason: e.reason }); });

const sioGone = new Promise((r) => sio.once('disconnect', (reason) => r(reason)));
const sioRetry = new Promise((r) => sio.io.once('reconnect_attempt', r));
const r = await fetch(`http://${addr}/api/drain`, { method: 'POST', headers: { Authorization: `apikey ${key}` } });
assert.equal(r.status, 200, await r.text());

assert.equal(await within(sioGone, 'socket.io told to go'), 'transport close');
await within(sioRetry, 'socket.io reconnects by itself');
const closed = await within(sockClosed, 'sockjs told to go');
assert.equal(closed.code, 1001, JSON.stringify(closed));
sio.close();
// The node exits once its sessions are gone: its port stops answering.
const deadline = Date.now() + 15000;
for (;;) {
  try { await fetch(`http://${addr}/healthz`); } catch { break; }
  assert.ok(Date.now() < deadline, 'the drained node exits');
  await new Promise((res) => setTimeout(res, 100));
}
console.log('OK');
process.exit(0);

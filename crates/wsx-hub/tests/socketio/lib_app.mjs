// socket.io-client 4 in Node against the application of tests/socketio.rs, built on
// the wsx_hub::socketio library: auth middleware, acks both ways and emitWithAck,
// typed arguments, binary anywhere in the arguments (nested, 64 KiB, 1 MiB), rooms
// reaching members only, a broadcast with binary from the server, namespaces and their
// refusals, a server-side disconnect.
// usage: node lib_app.mjs http://127.0.0.1:PORT
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { io } from 'socket.io-client';

const url = process.argv[2];
const bound = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms));
const within = (p, what, ms = 8000) => Promise.race([p, bound(ms, what)]);
const once = (emitter, ev, what = ev) => within(new Promise((r) => emitter.once(ev, (...a) => r(a))), what);
const results = [];
const ok = (name) => { results.push(name); console.log(`ok ${name}`); };

async function connect(name, opts = {}, path = '/') {
  const s = io(url + path, { reconnection: false, forceNew: true, auth: { name }, ...opts });
  const welcome = once(s, 'welcome');
  await once(s, 'connect', `connect ${name}`);
  assert.deepEqual(await welcome, [name]);
  return s;
}

for (const transports of [['polling', 'websocket'], ['websocket'], ['polling']]) {
  const a = await connect('ann', { transports });
  const b = await connect('bob', { transports });
  const c = await connect('cid', { transports });

  // Acks both ways: the client's (emitWithAck and a callback), the server's.
  assert.deepEqual(await a.emitWithAck('echo', 1, 'two', { three: [3] }), 1);
  const all = await within(new Promise((r) => a.emit('echo', 1, 'two', { three: [3] }, (...args) => r(args))), 'callback');
  assert.deepEqual(all, [1, 'two', { three: [3] }]);
  a.once('question', (n, ack) => ack(n + 1));
  const answer = once(a, 'answer');
  a.emit('ask-client');
  assert.deepEqual(await answer, [42]);

  // Typed arguments, and arguments that do not fit.
  assert.deepEqual(await new Promise((r) => a.emit('typed', 41, 'abc', (...x) => r(x))), [42, 'ABC']);
  const wrong = await a.emitWithAck('typed', 'not a number');
  assert.match(wrong.error, /invalid type/);

  // Binary anywhere: nested, 64 KiB, 1 MiB, back through an ack.
  const small = Buffer.from([1, 2, 3]);
  const big = crypto.randomBytes(65536);
  const huge = crypto.randomBytes(1 << 20);
  const back = await within(new Promise((r) => a.emit('echo', { deep: [small, { big }] }, huge, 'x', (...x) => r(x))), 'binary echo', 15000);
  assert.ok(Buffer.from(back[0].deep[0]).equals(small));
  assert.ok(Buffer.from(back[0].deep[1].big).equals(big));
  assert.ok(Buffer.from(back[1]).equals(huge));
  assert.equal(back[2], 'x');

  // Rooms: `say` reaches the other members only; a left room is silent.
  assert.equal(await a.emitWithAck('join', 'r1'), 'joined:r1');
  assert.equal(await b.emitWithAck('join', 'r1'), 'joined:r1');
  const cGot = [];
  c.on('said', (m) => cGot.push(m));
  const aGot = [];
  a.on('said', (m) => aGot.push(m));
  const heard = once(b, 'said');
  await a.emitWithAck('say', 'r1', 'hello room');
  assert.deepEqual(await heard, [{ from: 'ann', msg: 'hello room' }]);
  assert.equal(await b.emitWithAck('leave', 'r1'), 'left:r1');
  assert.equal(await c.emitWithAck('join', 'r1'), 'joined:r1');
  const cHeard = once(c, 'said');
  await a.emitWithAck('say', 'r1', 'second');
  assert.deepEqual(await cHeard, [{ from: 'ann', msg: 'second' }]);
  assert.equal(cGot.length, 1);
  assert.equal(aGot.length, 0, 'the sender is excluded');

  // A broadcast from the server with a nested attachment reaches the room's members.
  await a.emitWithAck('join', 'news');
  const headline = once(a, 'headline');
  const notB = [];
  b.on('headline', (...x) => notB.push(x));
  c.emit('announce', 'extra');
  const [title, extra] = await headline;
  assert.equal(title, 'extra');
  assert.deepEqual([...Buffer.from(extra.nested)], [7, 8, 9]);
  await b.emitWithAck('echo', 'barrier');
  assert.equal(notB.length, 0);

  // The server disconnects a socket: "io server disconnect".
  const kicked = once(c, 'disconnect');
  c.emit('kick');
  assert.deepEqual(await kicked, ['io server disconnect', undefined]);
  for (const s of [a, b]) s.disconnect();
  ok(`library app over ${transports.join('+')}`);
}

// The middleware's refusal carries its message and data; a namespace that refuses
// without the right key; one that does not exist.
{
  const s = io(url, { reconnection: false, forceNew: true });
  const [err] = await once(s, 'connect_error');
  assert.equal(err.message, 'name required');
  assert.deepEqual(err.data, { hint: 'io({auth: {name}})' });
  s.close();
  const admin = io(`${url}/admin`, { reconnection: false, forceNew: true, auth: { key: 'guess' } });
  assert.equal((await once(admin, 'connect_error'))[0].message, 'admins only');
  admin.close();
  const root = io(`${url}/admin`, { reconnection: false, forceNew: true, auth: { key: 'open sesame' } });
  await once(root, 'connect');
  root.close();
  const none = io(`${url}/none`, { reconnection: false, forceNew: true });
  assert.equal((await once(none, 'connect_error'))[0].message, 'Invalid namespace');
  none.close();
  ok('refusals');
}
console.log(`OK passed ${results.length}`);
process.exit(0);

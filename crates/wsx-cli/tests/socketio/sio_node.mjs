// socket.io-client 4 (the registry's package) in Node against `wsx serve`'s
// /socket.io/: every transport (polling then upgrade, WebSocket only, polling only),
// the auth payload with the hub's JWT, acks and emitWithAck, plain and binary
// publications (64 KiB, 1 MiB), channels reaching subscribers only, the unknown
// namespace, heartbeats while idle, disconnects both ways, connection state recovery,
// and a Socket.IO, a STOMP and a native client meeting in one channel.
// Exits non-zero at the first failed assertion; prints "OK passed N" at the end.
// usage: node sio_node.mjs WSX_BIN PORT CONFIG_TOML
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { io } from 'socket.io-client';
import { Client as Stomp } from '@stomp/stompjs';
import WebSocket from 'ws';
import { Server } from '../browser/lib.mjs';

const SECRET = 'sio-test-secret-0123456789abcdef';
const [wsxBin, port, config] = process.argv.slice(2);
const server = await new Server(wsxBin, port, [
  '--demo', 'off', '--config', config,
  '--token-hmac-secret', SECRET, '--allow-anonymous', 'on',
  // A short interval for the heartbeat test; a timeout that a 1 MiB publication on a
  // loaded CI machine (a debug build) cannot outlast: the client waits interval +
  // timeout for each ping, and 600 ms was once not enough there.
  '--socketio-ping-interval', '200ms', '--socketio-ping-timeout', '2s',
  '--socketio-max-payload', '4MiB', '--max-message-size', '4MiB', '--max-frame-size', '4MiB',
]).start();
const url = server.base;

const bound = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms));
const within = (p, what, ms = 8000) => Promise.race([p, bound(ms, what)]);
const once = (emitter, ev, what = ev) => within(new Promise((r) => emitter.once(ev, (...a) => r(a))), what);
const results = [];
const ok = (name) => { results.push(name); console.log(`ok ${name}`); };

function jwt(claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b({ alg: 'HS256', typ: 'JWT' })}.${b(claims)}`;
  return `${head}.${crypto.createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}
const token = (sub) => jwt({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });

/** Values pushed by callbacks, awaited one at a time. */
function inbox() {
  const got = [];
  const waiting = [];
  return {
    push(v) { const w = waiting.shift(); if (w) w(v); else got.push(v); },
    next(what) {
      return within(new Promise((r) => { if (got.length) r(got.shift()); else waiting.push(r); }), what);
    },
    pending: () => got.length,
  };
}

/** A connected client with a queue of `publication` events. */
async function client(opts = {}, path = '/') {
  const s = io(url + path, { reconnection: false, forceNew: true, ...opts });
  const pubs = inbox();
  s.on('publication', (...args) => pubs.push(args));
  s.next = (what = 'publication') => pubs.next(what);
  s.pending = pubs.pending;
  s.io.once('open', () => { s.firstTransport = s.io.engine.transport.name; });
  await once(s, 'connect', `connect ${JSON.stringify(opts)}`);
  return s;
}

async function call(s, event, ...args) {
  const r = await within(s.emitWithAck(event, ...args), event);
  if (r.error) throw new Error(`${event}: ${r.error.code} ${r.error.message}`);
  return r.result;
}

try {
  // Polling first, then the upgrade to WebSocket.
  {
    const s = await client({ transports: ['polling', 'websocket'] });
    assert.equal(s.firstTransport, 'polling');
    if (s.io.engine.transport.name !== 'websocket') await once(s.io.engine, 'upgrade');
    assert.equal(s.io.engine.transport.name, 'websocket');
    await call(s, 'subscribe', 'up');
    await server.api('publish', { channel: 'up', data: { n: 1 } });
    const [ch, data, meta] = await s.next();
    assert.deepEqual([ch, data, meta.offset], ['up', { n: 1 }, 1]);
    s.disconnect();
    ok('polling then upgrade');
  }

  // Each transport alone: subscribe, publish, receive.
  for (const transports of [['websocket'], ['polling']]) {
    const s = await client({ transports });
    assert.equal(s.firstTransport, transports[0]);
    assert.equal(s.io.engine.transport.name, transports[0]);
    await call(s, 'subscribe', `only-${transports[0]}`);
    const r = await call(s, 'publish', `only-${transports[0]}`, { hello: transports[0] });
    assert.equal(r.offset, 1);
    const [, data] = await s.next();
    assert.deepEqual(data, { hello: transports[0] });
    s.disconnect();
  }
  ok('websocket only and polling only');

  // The auth payload: a JWT names the user; a bad one is refused with connect_error.
  {
    const alice = await client({ auth: { token: token('alice') }, transports: ['websocket'] });
    await call(alice, 'subscribe', 'room#alice');
    const who = await call(alice, 'presence', 'room#alice');
    assert.deepEqual(Object.values(who.presence).map((m) => m.user), ['alice']);
    const other = await client({ transports: ['websocket'] });
    const denied = await within(other.emitWithAck('subscribe', 'room#alice'), 'denied');
    assert.equal(denied.error.code, 103);
    const bad = io(url, { reconnection: false, forceNew: true, auth: { token: 'not-a-jwt' } });
    const [err] = await once(bad, 'connect_error');
    assert.match(err.message, /token/i);
    assert.equal(err.data.code, 101);
    bad.close();
    alice.disconnect();
    other.disconnect();
    ok('auth payload and refusal');
  }

  // Binary publications (64 KiB and 1 MiB) and JSON ones, over both transports.
  for (const transports of [['websocket'], ['polling']]) {
    const s = await client({ transports });
    await call(s, 'subscribe', 'bin');
    for (const size of [65536, 1 << 20]) {
      const buf = crypto.randomBytes(size);
      await call(s, 'publish', 'bin', buf);
      const [, data] = await s.next(`binary ${size}`);
      assert.ok(Buffer.isBuffer(data) || data instanceof ArrayBuffer, typeof data);
      assert.ok(Buffer.from(data).equals(buf), `binary ${size} over ${transports}`);
    }
    const nested = await within(s.emitWithAck('publish', 'bin', { deep: [Buffer.from([1])] }), 'nested');
    assert.equal(nested.error.code, 107);
    s.disconnect();
  }
  ok('binary publications');

  // Channels reach their subscribers only; unsubscribe stops them.
  {
    const a = await client();
    const b = await client();
    await call(a, 'subscribe', 'members');
    await call(b, 'subscribe', 'others');
    await call(b, 'publish', 'members', 'to members');
    const [ch, data] = await a.next();
    assert.deepEqual([ch, data], ['members', 'to members']);
    await call(a, 'unsubscribe', 'members');
    await call(a, 'subscribe', 'marker');
    await call(b, 'publish', 'members', 'nobody');
    await call(b, 'publish', 'marker', 'last');
    const [mch] = await a.next();
    assert.equal(mch, 'marker');
    assert.equal(b.pending(), 0);
    a.disconnect();
    b.disconnect();
    ok('channels reach subscribers only');
  }

  // An unknown namespace is refused.
  {
    const s = io(`${url}/nope`, { reconnection: false, forceNew: true });
    const [err] = await once(s, 'connect_error');
    assert.equal(err.message, 'Invalid namespace');
    s.close();
    ok('unknown namespace');
  }

  // Idle with a 200 ms heartbeat: the connection lives on (pings answered), for 3 s.
  {
    const s = await client({ transports: ['websocket'] });
    let pings = 0;
    s.io.on('ping', () => pings++);
    let dropped = null;
    s.on('disconnect', (r) => { dropped = r; });
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(dropped, null);
    assert.ok(pings >= 10, `pings ${pings}`);
    assert.ok(s.connected);
    s.disconnect();
    ok('heartbeats while idle');
  }

  // Disconnects both ways: the client's leaves presence; the server's (HTTP API).
  {
    const watcher = await client();
    const s = await client({ auth: { token: token('bob') } });
    await call(s, 'subscribe', 'pres');
    const before = await call(watcher, 'presence_stats', 'pres');
    assert.equal(before.num_clients, 1);
    await call(watcher, 'subscribe', 'pres');
    const left = once(watcher, 'leave', 'leave');
    const me = await call(s, 'whoami');
    assert.equal(me.user, 'bob');
    const members = (await call(watcher, 'presence', 'pres')).presence;
    assert.equal(members[me.client].protocol, 'socketio', JSON.stringify(members));
    s.disconnect();
    const [ch, who] = await left;
    assert.deepEqual([ch, who.user, who.client], ['pres', 'bob', me.client]);
    assert.equal((await call(watcher, 'presence_stats', 'pres')).num_clients, 1);
    const t = await client({ auth: { token: token('carol') } });
    const gone = once(t, 'disconnect', 'server disconnect');
    await server.api('disconnect', { user: 'carol', code: 4000, reason: 'bye', reconnect: false });
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
    watcher.disconnect();
    ok('disconnect both ways');
  }

  // Connection state recovery: the transport drops, publications go on, the client
  // comes back with its pid and last offset and gets exactly what it missed.
  for (const drop of ['client', 'server']) {
    const s = await client({ auth: { token: token(`rec-${drop}`) }, transports: ['websocket'] });
    assert.equal(s.recovered, false);
    await call(s, 'subscribe', `rec-${drop}`);
    await call(s, 'subscribe', `rec2-${drop}`);
    for (let i = 1; i <= 2; i++) await server.api('publish', { channel: `rec-${drop}`, data: i });
    await s.next();
    await s.next();
    const dropped = once(s, 'disconnect', 'drop');
    if (drop === 'client') s.io.engine.close();
    else await server.api('disconnect', { user: `rec-${drop}`, code: 4001, reason: 'move', reconnect: true });
    await dropped;
    for (let i = 3; i <= 5; i++) await server.api('publish', { channel: `rec-${drop}`, data: i });
    await server.api('publish', { channel: `rec2-${drop}`, data: 'other' });
    s.connect();
    await once(s, 'connect', 'reconnect');
    assert.equal(s.recovered, true, `recovered after a ${drop} drop`);
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await s.next('missed'))[1]);
    assert.deepEqual(got.filter((d) => typeof d === 'number'), [3, 4, 5]);
    assert.ok(got.includes('other'));
    await server.api('publish', { channel: `rec-${drop}`, data: 6 });
    assert.equal((await s.next('live'))[1], 6);
    assert.equal(s.pending(), 0);
    s.disconnect();
  }
  // A stale pid does not recover (a fresh session, nothing replayed).
  {
    const s = await client({ transports: ['websocket'] });
    await call(s, 'subscribe', 'rec-stale');
    s._pid = 'not-a-pid';
    const dropped = once(s, 'disconnect');
    s.io.engine.close();
    await dropped;
    s.connect();
    await once(s, 'connect');
    assert.equal(s.recovered, false);
    s.disconnect();
  }
  ok('connection state recovery');

  // A Socket.IO, a STOMP and a native client in one channel, in order.
  {
    const sio = await client({ transports: ['websocket'] });
    await call(sio, 'subscribe', 'mix');
    const stomp = new Stomp({
      webSocketFactory: () => new WebSocket(`ws://127.0.0.1:${port}/stomp`, ['v12.stomp']),
      reconnectDelay: 0,
      debug: () => {},
    });
    const stompGot = inbox();
    await within(new Promise((resolve) => { stomp.onConnect = resolve; stomp.activate(); }), 'stomp');
    const subscribed = new Promise((r) => stomp.watchForReceipt('s1', r));
    stomp.subscribe('/topic/mix', (m) => stompGot.push(JSON.parse(m.body)), { receipt: 's1' });
    await within(subscribed, 'stomp subscribe');
    const native = new WebSocket(`ws://127.0.0.1:${port}/connection/websocket`);
    const nativeGot = inbox();
    const replies = new Map();
    native.on('message', (m) => {
      const msg = JSON.parse(m.toString());
      if (msg.id) replies.get(msg.id)?.(msg);
      else if (msg.push?.pub) nativeGot.push(msg.push.pub.data);
    });
    await once(native, 'open');
    const cmd = (id, body) => within(new Promise((r) => { replies.set(id, r); native.send(JSON.stringify({ id, ...body })); }), `native ${id}`);
    await cmd(1, { connect: {} });
    await cmd(2, { subscribe: { channel: 'mix' } });
    await call(sio, 'publish', 'mix', { from: 'socket.io' });
    stomp.publish({ destination: '/topic/mix', body: JSON.stringify({ from: 'stomp' }), headers: { 'content-type': 'application/json', receipt: 'p' } });
    await within(new Promise((r) => stomp.watchForReceipt('p', r)), 'stomp publish');
    await cmd(3, { publish: { channel: 'mix', data: { from: 'native' } } });
    const want = [{ from: 'socket.io' }, { from: 'stomp' }, { from: 'native' }];
    const all = async (next) => { const out = []; for (let i = 0; i < 3; i++) out.push(await next()); return out; };
    assert.deepEqual(await all(async () => (await sio.next('mix'))[1]), want);
    assert.deepEqual(await all(() => stompGot.next('stomp mix')), want);
    assert.deepEqual(await all(() => nativeGot.next('native mix')), want);
    await stomp.deactivate();
    native.close();
    sio.disconnect();
    ok('socket.io, stomp and native in one channel');
  }
  console.log(`OK passed ${results.length}`);
} finally {
  await server.stop();
}

// Three `wsx serve` nodes on one Redis, with third-party clients: a native subscriber
// (ws) on node A, a STOMP subscriber (@stomp/stompjs) on node B and a Socket.IO
// subscriber (socket.io-client) on node C.
// - everything published through the HTTP API of any node reaches all three, in order;
// - presence, asked of any node, is the cluster's, with each member's protocol;
// - recovery across nodes: the native client leaves A, ten are published, it comes
//   back on B with its offset and gets exactly those ten;
// - node C is killed (SIGKILL): its member leaves presence within the presence TTL
//   (the others hear the leave), and A and B keep working.
// usage: node cluster.mjs API_KEY ADDR_A ADDR_B ADDR_C PID_C
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Client } from '@stomp/stompjs';
import { io } from 'socket.io-client';

const [key, A, B, C, pidC] = process.argv.slice(2);
const CHANNEL = 'room:cluster';
const within = (p, what, ms = 10000) => Promise.race([
  p,
  new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)),
]);

async function api(addr, method, body) {
  const r = await fetch(`http://${addr}/api/${method}`, {
    method: 'POST',
    headers: { Authorization: `apikey ${key}` },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `${method} on ${addr}: ${text}`);
  return JSON.parse(text).result;
}

// Items pushed by callbacks, awaited in order.
class Inbox {
  constructor() { this.items = []; this.waiters = []; }
  push(x) { this.items.push(x); for (const w of this.waiters.splice(0)) w(); }
  async take(n, what) {
    while (this.items.length < n) await within(new Promise((r) => this.waiters.push(r)), `${what}: ${this.items.length} of ${n}`);
    return this.items.splice(0, n);
  }
}

class Native {
  static async open(addr, info) {
    const n = new Native();
    n.ws = new WebSocket(`ws://${addr}/connection/websocket`);
    n.next = 1;
    n.pending = new Map();
    n.pubs = new Inbox();
    n.events = new Inbox();
    n.ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      if (m.id && n.pending.has(m.id)) {
        const p = n.pending.get(m.id);
        n.pending.delete(m.id);
        if (m.error) p.reject(new Error(JSON.stringify(m.error)));
        else p.resolve(m);
      } else if (m.push && m.push.pub) n.pubs.push(m.push.pub);
      else if (m.push) n.events.push(m.push);
    });
    await within(new Promise((r, j) => { n.ws.once('open', r); n.ws.once('error', j); }), 'native open');
    n.client = (await n.call('connect', { name: 'cluster-test', info })).connect.client;
    return n;
  }

  call(method, body) {
    const id = this.next++;
    return within(new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, [method]: body }));
    }), method);
  }

  close() { this.ws.close(); }
}

const ok = (what) => console.error(`ok ${what}`);

// The three subscribers.
const native = await Native.open(A, 'native-on-a');
const sub = (await native.call('subscribe', { channel: CHANNEL })).subscribe;
const epoch = sub.epoch;

const stompMessages = new Inbox();
const stomp = new Client({
  webSocketFactory: () => new WebSocket(`ws://${B}/stomp`, ['v12.stomp']),
  connectHeaders: { login: 'stomp-on-b' },
  reconnectDelay: 0,
  debug: () => {},
});
await within(new Promise((resolve, reject) => {
  stomp.onConnect = resolve;
  stomp.onStompError = (f) => reject(new Error(f.headers.message));
  stomp.activate();
}), 'stomp connect');
await within(new Promise((resolve) => {
  stomp.watchForReceipt('sub', resolve);
  stomp.subscribe(`/topic/${CHANNEL}`, (m) => stompMessages.push(m), { receipt: 'sub' });
}), 'stomp subscribe');

const sio = io(`http://${C}`, { auth: { info: 'socketio-on-c' }, transports: ['websocket'], reconnection: false });
const sioMessages = new Inbox();
sio.on('publication', (channel, data) => { if (channel === CHANNEL) sioMessages.push(data); });
await within(new Promise((r) => sio.once('connect', r)), 'socket.io connect');
const r = await sio.timeout(10000).emitWithAck('subscribe', CHANNEL);
assert.ok(r.result, JSON.stringify(r));

// Publications through every node's API, in order, reach every subscriber in order.
const N = 30;
const nodes = [A, B, C];
for (let i = 1; i <= N; i++) {
  const res = await api(nodes[i % 3], 'publish', { channel: CHANNEL, data: { i } });
  assert.equal(res.offset, i, 'one offset sequence for the cluster');
}
const want = Array.from({ length: N }, (_, k) => k + 1);
assert.deepEqual((await native.pubs.take(N, 'native')).map((p) => p.data.i), want);
assert.deepEqual((await stompMessages.take(N, 'stomp')).map((m) => JSON.parse(m.body).i), want);
assert.deepEqual((await sioMessages.take(N, 'socket.io')).map((d) => d.i), want);
ok('publications from every node reach every protocol on every node, in order');

// Presence of the whole cluster, from any node.
for (const addr of nodes) {
  const members = Object.values((await api(addr, 'presence', { channel: CHANNEL })).presence);
  const seen = members.map((m) => `${m.info}/${m.protocol}`).sort();
  assert.deepEqual(seen, ['native-on-a/native', 'socketio-on-c/socketio', 'stomp-on-b/stomp'], `presence asked of ${addr}`);
}
const stats = await api(B, 'presence_stats', { channel: CHANNEL });
assert.equal(stats.num_clients, 3);
ok('presence is the cluster\'s');

// Cluster-wide answers: channel counts and the nodes, from any node.
for (const addr of nodes) {
  const { channels } = await api(addr, 'channels', {});
  assert.equal(channels[CHANNEL].num_clients, 3, `channels asked of ${addr}: ${JSON.stringify(channels)}`);
}
const info = await api(B, 'info', {});
assert.deepEqual(info.nodes.map((n) => n.address).sort(), nodes.map((a) => `http://${a}`).sort(), JSON.stringify(info));
assert.equal(info.nodes.reduce((sum, n) => sum + n.connections, 0), 3);
ok('/api/channels and /api/info answer for the whole cluster');

// Recovery across nodes: leave A at offset N, miss ten, come back on B.
native.close();
for (let i = N + 1; i <= N + 10; i++) await api(nodes[i % 3], 'publish', { channel: CHANNEL, data: { i } });
const back = await Native.open(B, 'native-back-on-b');
const rec = (await back.call('subscribe', { channel: CHANNEL, recover: true, offset: N, epoch })).subscribe;
assert.equal(rec.recovered, true, JSON.stringify(rec));
await api(C, 'publish', { channel: CHANNEL, data: { i: N + 11 } });
assert.deepEqual((await back.pubs.take(11, 'recovered')).map((p) => p.data.i), Array.from({ length: 11 }, (_, k) => N + 1 + k));
ok('recovery across nodes gives exactly what was missed');
await stompMessages.take(11, 'stomp meanwhile');
await sioMessages.take(11, 'socket.io meanwhile');

// Work queues are the cluster's: a STOMP worker on C takes jobs sent on A (and does
// not acknowledge them), then a worker on B joins.
async function stompOn(addr, login) {
  const c = new Client({
    webSocketFactory: () => new WebSocket(`ws://${addr}/stomp`, ['v12.stomp']),
    connectHeaders: { login },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
  });
  await within(new Promise((resolve, reject) => {
    c.onConnect = resolve;
    c.onStompError = (f) => reject(new Error(f.headers.message));
    c.activate();
  }), `stomp connect ${login}`);
  return c;
}
const subscribed = (c, dest, inbox, id) => within(new Promise((resolve) => {
  c.watchForReceipt(id, resolve);
  c.subscribe(dest, (m) => inbox.push(m), { ack: 'client-individual', receipt: id });
}), `subscribe ${id}`);
const sender = await stompOn(A, 'sender-a');
const workerC = await stompOn(C, 'worker-c');
const jobsC = new Inbox();
await subscribed(workerC, '/queue/jobs', jobsC, 'jc');
for (let j = 1; j <= 5; j++) sender.publish({ destination: '/queue/jobs', body: String(j) });
const heldByC = (await jobsC.take(5, 'jobs on C')).map((m) => Number(m.body));
assert.deepEqual(heldByC, [1, 2, 3, 4, 5]);
const jobsB = new Inbox();
await subscribed(stomp, '/queue/jobs', jobsB, 'jb');
ok('a queue\'s jobs sent on node A reach a worker on node C');

// Node C dies: its member leaves presence within the TTL; A and B go on.
const leaves = [];
process.kill(Number(pidC), 'SIGKILL');
const killedAt = Date.now();
for (;;) {
  const [ev] = await back.events.take(1, 'the dead node\'s member leaving');
  if (ev.leave) { leaves.push(ev.leave); if (ev.leave.info === 'socketio-on-c') break; }
}
const waited = Date.now() - killedAt;
const members = Object.values((await api(A, 'presence', { channel: CHANNEL })).presence).map((m) => m.info).sort();
assert.deepEqual(members, ['native-back-on-b', 'stomp-on-b']);
await api(A, 'publish', { channel: CHANNEL, data: { i: N + 12 } });
assert.equal((await back.pubs.take(1, 'after the kill')).at(0).data.i, N + 12);
assert.equal(JSON.parse((await stompMessages.take(1, 'stomp after the kill'))[0].body).i, N + 12);
ok(`a killed node's member left presence after ${waited} ms; the others keep working`);

// The jobs the dead node's worker held come back to the worker on B, marked
// redelivered, once the cluster sees the node gone.
const redone = await within(jobsB.take(5, 'the dead worker\'s jobs'), 'redelivery', 20000);
assert.deepEqual(redone.map((m) => Number(m.body)), [1, 2, 3, 4, 5]);
assert.ok(redone.every((m) => m.headers.redelivered === 'true'), JSON.stringify(redone.map((m) => m.headers)));
for (const m of redone) m.ack();
ok('a dead node\'s unacknowledged jobs go to a live worker');

// The HTTP API of node A reaches connections on node B: unsubscribe, disconnect.
const gone = await api(A, 'unsubscribe', { channel: CHANNEL, client: back.client });
assert.equal(gone.unsubscribed, 1);
const [unsub] = await back.events.take(1, 'the unsubscribe push');
assert.ok(unsub.unsubscribe !== undefined && unsub.channel === CHANNEL, JSON.stringify(unsub));
const stompClosed = new Promise((resolve) => { stomp.onStompError = (f) => resolve(f); });
const present = Object.values((await api(B, 'presence', { channel: CHANNEL })).presence);
const stompMember = present.find((m) => m.protocol === 'stomp');
const dc = await api(A, 'disconnect', { client: stompMember.client, code: 4001, reason: 'bye from A', reconnect: false });
assert.equal(dc.disconnected, 1);
const err = await within(stompClosed, 'the STOMP ERROR frame');
assert.equal(err.headers['wsx-error'], 'disconnected', JSON.stringify(err.headers));
const unknown = await fetch(`http://${A}/api/disconnect`, { method: 'POST', headers: { Authorization: `apikey ${key}` }, body: JSON.stringify({ client: '999999999' }) });
assert.equal(unknown.status, 404);
ok('the API of one node unsubscribes and disconnects connections on another');

sio.close();
back.close();
await sender.deactivate();
await stomp.deactivate();
console.log('OK');
process.exit(0);

// A client process of the soak (bench/soak/soak.mjs forks a few, so that the clients
// use every core): well-behaved subscribers `from..to` over native (ws), STOMP
// (@stomp/stompjs) and Socket.IO (socket.io-client), churning as told; it reports its
// counts to the coordinator every second.
import WebSocket from 'ws';
import { Client as Stomp } from '@stomp/stompjs';
import { io } from 'socket.io-client';

const { base, channels: CHANNELS, from, to, churn: CHURN } = JSON.parse(process.env.SOAK_WORKER);
const stats = { delivered: 0, violations: 0, unrecovered: 0, reconnects: 0, firstProblem: null, latencies: [] };
const problem = (what) => { stats.violations += 1; if (!stats.firstProblem) stats.firstProblem = what; };
let running = true;

// One well-behaved subscriber: its channel, the last offset and epoch it saw; `kind`
// says how it speaks. `open()` connects and subscribes (recovering once it has seen
// something), `close()` drops the connection; `seen(offset, t)` checks the order.
class Sub {
  constructor(id, kind) {
    this.id = id;
    this.kind = kind;
    this.channel = `soak:${id % CHANNELS}`;
    this.offset = null;
    this.epoch = null;
    this.conn = null;
    this.live = false;
    this.measured = id % 10 === 0; // a tenth of them time each delivery
  }

  // A delivery on `conn`: ignored when that connection was dropped already (a client
  // library may still hand over what arrived before its close completed).
  seen(conn, offset, t) {
    if (conn !== this.conn) return;
    if (this.offset !== null && offset !== this.offset + 1) {
      problem(`${this.kind} ${this.id} on ${this.channel}: offset ${offset} after ${this.offset}`);
    }
    if (this.offset === null || offset > this.offset) this.offset = offset;
    stats.delivered += 1;
    if (this.measured && t) stats.latencies.push(Date.now() - t);
  }

  subscribed(conn, r) {
    if (conn !== this.conn) return;
    if (this.offset !== null && r.recovered !== true) {
      stats.unrecovered += 1;
      problem(`${this.kind} ${this.id}: not recovered ${JSON.stringify(r)}`);
    }
    if (this.offset === null) this.offset = r.offset;
    this.epoch = r.epoch;
    this.live = true;
  }

  recover() {
    return this.offset === null ? {} : { recover: true, offset: this.offset, epoch: this.epoch };
  }

  open() {
    this.live = false;
    if (this.kind === 'native') return this.openNative();
    if (this.kind === 'stomp') return this.openStomp();
    return this.openSocketIo();
  }

  openNative() {
    return new Promise((resolve) => {
      const ws = new WebSocket(`ws://${base}/connection/websocket`, { perMessageDeflate: process.env.SOAK_DEFLATE !== 'off' });
      this.conn = ws;
      ws.on('open', () => {
        ws.send(JSON.stringify({ id: 1, connect: { name: 'soak' } }));
        ws.send(JSON.stringify({ id: 2, subscribe: { channel: this.channel, ...this.recover() } }));
      });
      ws.on('message', (m) => {
        const msg = JSON.parse(m);
        if (msg.id === 2) {
          if (msg.error) problem(`native ${this.id}: ${JSON.stringify(msg.error)}`);
          else this.subscribed(ws, msg.subscribe);
          resolve();
        } else if (msg.push && msg.push.pub) this.seen(ws, msg.push.pub.offset, msg.push.pub.data.t);
      });
      ws.on('close', () => { if (this.conn === ws) this.reopen(); resolve(); });
      ws.on('error', () => {});
    });
  }

  openStomp() {
    return new Promise((resolve) => {
      const headers = { receipt: 'sub' };
      if (this.offset !== null) Object.assign(headers, { 'wsx-since-offset': String(this.offset), 'wsx-since-epoch': this.epoch });
      const c = new Stomp({
        webSocketFactory: () => new WebSocket(`ws://${base}/stomp`, ['v12.stomp']),
        reconnectDelay: 0, heartbeatIncoming: 0, heartbeatOutgoing: 0, debug: () => {},
      });
      this.conn = c;
      c.onConnect = () => {
        c.watchForReceipt('sub', (f) => {
          this.subscribed(c, {
            recovered: f.headers['wsx-recovered'] === 'true',
            offset: Number(f.headers['wsx-offset']),
            epoch: f.headers['wsx-epoch'],
          });
          resolve();
        });
        c.subscribe(`/topic/${this.channel}`, (m) => this.seen(c, Number(m.headers['wsx-offset']), JSON.parse(m.body).t), headers);
      };
      c.onStompError = (f) => problem(`stomp ${this.id}: ${f.headers.message}`);
      c.onWebSocketClose = () => { if (this.conn === c) this.reopen(); resolve(); };
      c.activate();
    });
  }

  openSocketIo() {
    return new Promise((resolve) => {
      const s = io(`http://${base}`, { transports: ['websocket'], reconnection: false, forceNew: true });
      this.conn = s;
      s.on('connect', async () => {
        try {
          const r = await s.timeout(30000).emitWithAck('subscribe', this.channel, this.recover());
          if (r.error) problem(`socket.io ${this.id}: ${JSON.stringify(r.error)}`);
          else this.subscribed(s, r.result);
        } catch (e) { /* dropped meanwhile: reopened */ }
        resolve();
      });
      s.on('publication', (channel, data, meta) => { if (channel === this.channel) this.seen(s, meta.offset, data.t); });
      s.on('disconnect', () => { if (this.conn === s) this.reopen(); resolve(); });
      s.on('connect_error', () => { if (this.conn === s) this.reopen(); resolve(); });
    });
  }

  // The connection dropped without our asking: come back (after a pause).
  reopen() {
    this.conn = null;
    this.live = false;
    if (!running) return;
    stats.reconnects += 1;
    setTimeout(() => { if (!this.conn) this.open(); }, 200 + Math.random() * 800);
  }

  // Drop the connection on purpose (churn); reopen after a pause.
  churn() {
    const c = this.conn;
    this.conn = null;
    this.live = false;
    if (!c) return;
    if (this.kind === 'native') c.close();
    else if (this.kind === 'stomp') c.deactivate();
    else c.disconnect();
    stats.reconnects += 1;
    setTimeout(() => { if (running && !this.conn) this.open(); }, 100 + Math.random() * 400);
  }
}

// SOAK_KINDS=native (say): one front-end only, to tell which one a trend comes from.
const kinds = process.env.SOAK_KINDS ? process.env.SOAK_KINDS.split(',') : ['native', 'native', 'stomp', 'socketio'];
const subs = [];
for (let i = from; i < to; i++) subs.push(new Sub(i, kinds[i % kinds.length]));
for (let i = 0; i < subs.length; i += 100) {
  await Promise.all(subs.slice(i, i + 100).map((s) => s.open()));
}
process.send({ type: 'ready' });

let churner = setInterval(() => {
  const n = Math.round(subs.length * CHURN);
  for (let k = 0; k < n; k++) subs[Math.floor(Math.random() * subs.length)].churn();
}, 1000);
let finals = null;
setInterval(() => {
  const report = {
    type: 'report',
    delivered: stats.delivered,
    violations: stats.violations,
    unrecovered: stats.unrecovered,
    reconnects: stats.reconnects,
    firstProblem: stats.firstProblem,
    latencies: stats.latencies.splice(0),
    live: subs.filter((s) => s.live).length,
  };
  if (finals) {
    const behind = subs.filter((s) => !(s.live && s.offset === finals[s.channel]));
    report.behind = behind.length;
    if (behind.length) report.example = `${behind[0].kind} ${behind[0].id}: ${behind[0].offset} of ${finals[behind[0].channel]}, live ${behind[0].live}`;
  }
  process.send(report);
}, 1000);
process.on('message', (m) => {
  if (m.type === 'stop-churn') { clearInterval(churner); churner = null; }
  if (m.type === 'finals') finals = m.finals;
  if (m.type === 'exit') { running = false; process.exit(0); }
});

// wsx.js — the browser client of the wsx hub's native protocol (docs/protocol.md).
// A plain ES module, no build step:
//
//   import { Client } from '/wsx.js';
//   const client = new Client('ws://localhost:3000/connection/websocket');
//   client.on('state', (s) => console.log(s.state, s.delay));
//   const sub = client.subscribe('chat:lobby', { onPublication: (data, p) => console.log(data) });
//   client.connect();
//   await client.publish('chat:lobby', { text: 'hi' });
//
// Reconnects with exponential backoff and jitter, resubscribes with recovery from the
// last offset seen, and honours the server's disconnect advice.
//
// Transports, tried in order until one opens (`transports` option to choose):
// 'websocket', 'sse' (server-sent events + POST), 'polling' (HTTP long-polling + POST),
// and 'sockjs' when the page loaded sockjs-client (window.SockJS). Recovery works
// across a change of transport: subscriptions keep their offsets.

const NO_RECONNECT_CLOSE_CODES = new Set([3001, 3009, 4003]);

export class WsxError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Listeners by event name, and the connection state every client here reports.
export class Emitter {
  constructor() {
    this._listeners = new Map();
    this.state = 'disconnected';
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  _emit(event, payload) {
    for (const fn of this._listeners.get(event) || []) {
      try { fn(payload); } catch (e) { console.error(e); }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit('state', { state, ...extra });
  }
}

export class Subscription {
  constructor(client, channel, handlers) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers;
    this.offset = null;
    this.epoch = null;
    this.active = false;
  }

  publish(data) { return this.client.publish(this.channel, data); }
  presence() { return this.client.presence(this.channel); }
  history(opts) { return this.client.history(this.channel, opts); }

  unsubscribe() {
    this.client._subs.delete(this.channel);
    if (this.active) {
      this.active = false;
      return this.client._call('unsubscribe', { channel: this.channel }).catch(() => {});
    }
    return Promise.resolve();
  }
}

// A transport over plain HTTP with the interface of a WebSocket (readyState, send,
// close, onopen/onmessage/onclose). Sends are posted one request at a time, in order.
class HttpTransport {
  constructor(base) {
    this.base = base;
    this.readyState = 0;
    this.id = null;
    this._queue = [];
    this._posting = false;
  }

  send(text) {
    this._queue.push(text);
    this._flush();
  }

  async _flush() {
    if (this._posting || !this._queue.length || this.readyState !== 1) return;
    this._posting = true;
    const body = this._queue.splice(0).join('\n');
    try {
      const r = await fetch(`${this.base}/${this.id}`, { method: 'POST', body });
      if (!r.ok) throw new Error(`status ${r.status}`);
    } catch (e) {
      this._closed(1006, `send failed: ${e.message}`);
    }
    this._posting = false;
    this._flush();
  }

  _opened(id) {
    this.id = id;
    this.readyState = 1;
    if (this.onopen) this.onopen();
    this._flush();
  }

  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._stop();
    if (this.onclose) this.onclose({ code, reason });
  }

  close() { this._closed(1000, 'client disconnect'); }
}

// Server-sent events for what the server sends.
class SseTransport extends HttpTransport {
  constructor(base) {
    super(`${base}/connection/sse`);
    const es = new EventSource(this.base);
    this._es = es;
    es.addEventListener('session', (e) => this._opened(JSON.parse(e.data).session));
    es.onmessage = (e) => { if (this.onmessage) this.onmessage({ data: e.data }); };
    es.addEventListener('close', (e) => { const c = JSON.parse(e.data); this._closed(c.code, c.reason); });
    // No automatic reconnection of the stream: a new stream is a new session.
    es.onerror = () => this._closed(1006, 'event stream failed');
  }

  _stop() { this._es.close(); }
}

// Long-polling for what the server sends.
class PollTransport extends HttpTransport {
  constructor(base) {
    super(`${base}/connection/poll`);
    this._abort = new AbortController();
    this._run();
  }

  async _run() {
    try {
      const r = await fetch(this.base, { method: 'POST', signal: this._abort.signal });
      if (!r.ok) throw new Error(`status ${r.status}`);
      this._opened((await r.json()).session);
      while (this.readyState === 1) {
        const p = await fetch(`${this.base}/${this.id}`, { signal: this._abort.signal });
        if (p.status === 410) {
          const c = await p.json();
          this._closed(c.code, c.reason);
          return;
        }
        if (!p.ok) throw new Error(`status ${p.status}`);
        for (const m of await p.json()) {
          if (this.readyState !== 1) return;
          if (this.onmessage) this.onmessage({ data: JSON.stringify(m) });
        }
      }
    } catch (e) {
      this._closed(1006, `poll failed: ${e.message}`);
    }
  }

  _stop() { this._abort.abort(); }
}

export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      token: undefined,
      name: 'wsx.js',
      info: undefined, // free text shown in presence (a nickname, say)
      minReconnectDelay: 500,
      maxReconnectDelay: 20000,
      WebSocket: globalThis.WebSocket,
      // In the order tried; default: websocket, sse, polling, and sockjs if loaded.
      transports: undefined,
      ...options,
    };
    this.transport = null;
    this._subs = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._timer = null;
    this._wanted = false;
    this.clientId = null;
  }

  connect() {
    this._wanted = true;
    if (this._ws) return;
    clearTimeout(this._timer);
    this._setState(this._attempt === 0 ? 'connecting' : 'reconnecting');
    const order = this.options.transports
      || ['websocket', 'sse', 'polling', ...(globalThis.SockJS ? ['sockjs'] : [])];
    this._open(order, 0);
  }

  // The base HTTP URL of the server (from the WebSocket URL).
  _httpBase() {
    const u = new URL(this.url, globalThis.location && globalThis.location.href);
    const scheme = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
    return `${scheme}//${u.host}`;
  }

  _transport(name) {
    switch (name) {
      case 'websocket':
        if (!this.options.WebSocket) throw new Error('no WebSocket');
        return new this.options.WebSocket(this.url);
      case 'sse':
        if (!globalThis.EventSource) throw new Error('no EventSource');
        return new SseTransport(this._httpBase());
      case 'polling':
        return new PollTransport(this._httpBase());
      case 'sockjs':
        if (!globalThis.SockJS) throw new Error('sockjs-client not loaded');
        return new globalThis.SockJS(`${this._httpBase()}/connection/sockjs`);
      default:
        throw new Error(`unknown transport ${name}`);
    }
  }

  // Open the transport order[i]; one that closes before it opened hands over to the
  // next in the order.
  _open(order, i) {
    let t;
    try {
      t = this._transport(order[i]);
    } catch (e) {
      if (i + 1 < order.length) return this._open(order, i + 1);
      return this._onClose(1006, e.message);
    }
    let opened = false;
    this._ws = t;
    t.onopen = () => {
      opened = true;
      this.transport = order[i];
      this._onOpen();
    };
    t.onmessage = (ev) => this._onMessage(ev.data);
    t.onclose = (ev) => {
      if (this._ws !== t) return;
      if (!opened && i + 1 < order.length) {
        this._ws = null;
        this._open(order, i + 1);
      } else {
        this._onClose(ev.code, ev.reason);
      }
    };
  }

  disconnect() {
    this._wanted = false;
    clearTimeout(this._timer);
    const t = this._ws;
    this._ws = null;
    if (t) t.close(1000, 'client disconnect');
    for (const p of this._pending.values()) p.reject(new WsxError(0, 'connection closed'));
    this._pending.clear();
    for (const sub of this._subs.values()) sub.active = false;
    this._setState('disconnected');
  }

  subscribe(channel, handlers = {}) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel, handlers);
      this._subs.set(channel, sub);
      if (this.state === 'connected') this._subscribe(sub);
    }
    return sub;
  }

  publish(channel, data) { return this._call('publish', { channel, data }); }
  presence(channel) { return this._call('presence', { channel }).then((r) => r.presence); }
  presenceStats(channel) { return this._call('presence_stats', { channel }); }
  history(channel, opts = {}) { return this._call('history', { channel, ...opts }); }

  _call(method, body) {
    if (!this._ws || this._ws.readyState !== 1 || (method !== 'connect' && this.state !== 'connected')) {
      return Promise.reject(new WsxError(0, 'not connected'));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this._ws.send(JSON.stringify({ id, [method]: body }));
    });
  }

  async _onOpen() {
    try {
      const r = await this._call('connect', { token: this.options.token, name: this.options.name, info: this.options.info });
      this.clientId = r.client;
      this._attempt = 0;
      this._setState('connected', { client: r.client });
      for (const sub of this._subs.values()) this._subscribe(sub);
    } catch (e) {
      this._emit('error', e);
      // A refused token will not get better by retrying.
      this._wanted = false;
      if (this._ws) this._ws.close(1000, 'connect refused');
    }
  }

  async _subscribe(sub) {
    const req = { channel: sub.channel };
    if (sub.offset !== null && sub.epoch !== null) {
      Object.assign(req, { recover: true, offset: sub.offset, epoch: sub.epoch });
    }
    try {
      const r = await this._call('subscribe', req);
      sub.active = true;
      if (r.epoch !== undefined) {
        if (r.recovered === false || sub.epoch === null) sub.offset = r.offset;
        sub.epoch = r.epoch;
      }
      if (sub.handlers.onSubscribed) sub.handlers.onSubscribed({ recovered: r.recovered, offset: r.offset, epoch: r.epoch });
    } catch (e) {
      if (sub.handlers.onError) sub.handlers.onError(e);
    }
  }

  _onMessage(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (msg.id !== undefined && this._pending.has(msg.id)) {
      const p = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      if (msg.error) p.reject(new WsxError(msg.error.code, msg.error.message));
      else p.resolve(Object.values(msg).find((v, i) => Object.keys(msg)[i] !== 'id'));
      return;
    }
    const push = msg.push;
    if (!push) return;
    if (push.disconnect) {
      if (!push.disconnect.reconnect) this._wanted = false;
      this._emit('disconnect', push.disconnect);
      return;
    }
    const sub = this._subs.get(push.channel);
    if (!sub) return;
    if (push.pub) {
      if (sub.offset === null || push.pub.offset > sub.offset) sub.offset = push.pub.offset;
      if (sub.handlers.onPublication) sub.handlers.onPublication(push.pub.data, push.pub);
    } else if (push.join && sub.handlers.onJoin) {
      sub.handlers.onJoin(push.join);
    } else if (push.leave && sub.handlers.onLeave) {
      sub.handlers.onLeave(push.leave);
    } else if (push.unsubscribe) {
      // The server removed the subscription: do not resubscribe on reconnect.
      sub.active = false;
      this._subs.delete(push.channel);
      if (sub.handlers.onUnsubscribed) sub.handlers.onUnsubscribed();
    }
  }

  _onClose(code, reason) {
    this._ws = null;
    for (const p of this._pending.values()) p.reject(new WsxError(0, 'connection closed'));
    this._pending.clear();
    for (const sub of this._subs.values()) sub.active = false;
    if (NO_RECONNECT_CLOSE_CODES.has(code)) this._wanted = false;
    if (!this._wanted) {
      this._setState('disconnected', { code, reason });
      return;
    }
    // Exponential backoff with jitter: half to all of min * 2^attempt, capped.
    const base = Math.min(this.options.maxReconnectDelay, this.options.minReconnectDelay * 2 ** this._attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    this._attempt += 1;
    this._setState('reconnecting', { delay, code, reason });
    this._timer = setTimeout(() => this.connect(), delay);
  }
}

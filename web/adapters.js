// The hub over STOMP (stompjs) and over Socket.IO (socket.io-client), with the
// interface of wsx.js's Client (state events, subscribe with onPublication, onJoin,
// onLeave and onSubscribed, publish, presence, history, recovery on reconnect), so
// that the demo pages run unchanged over any protocol the server speaks. The page
// loads the client library first (window.StompJs, window.io).
//
// STOMP has no frame for presence or history: `options.http` answers them (the demo
// asks its backend). Joins and leaves come as MESSAGE frames (wsx-presence: true).
import { Emitter, Subscription, WsxError } from '/wsx.js';

class AdapterSubscription extends Subscription {
  unsubscribe() { return this.client._unsubscribe(this); }

  // The subscribe answer: position and whether what was missed follows.
  _subscribed(r) {
    this.active = true;
    if (r.epoch !== undefined && r.epoch !== null) {
      if (r.recovered === false || this.epoch === null) this.offset = r.offset;
      this.epoch = r.epoch;
    }
    if (this.handlers.onSubscribed) this.handlers.onSubscribed({ recovered: r.recovered, offset: r.offset, epoch: r.epoch });
  }

  _publication(data, offset) {
    if (offset !== null && (this.offset === null || offset > this.offset)) this.offset = offset;
    if (this.handlers.onPublication) this.handlers.onPublication(data, { offset, data });
  }

  // Recovery fields for a resubscription, once a position is known.
  _since() {
    return this.offset !== null && this.epoch !== null ? { offset: this.offset, epoch: this.epoch } : null;
  }
}

class AdapterClient extends Emitter {
  constructor(url, options) {
    super();
    this.url = url;
    this.options = { token: undefined, info: undefined, ...options };
    this.clientId = null;
    this.transport = null;
    this._subs = new Map();
    this._wanted = false;
  }

  subscribe(channel, handlers = {}) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = new AdapterSubscription(this, channel, handlers);
      this._subs.set(channel, sub);
      if (this.state === 'connected') this._subscribe(sub);
    }
    return sub;
  }

  _resubscribeAll() {
    for (const sub of this._subs.values()) this._subscribe(sub);
  }

  _lost(extra) {
    for (const sub of this._subs.values()) sub.active = false;
    this._setState(this._wanted ? 'reconnecting' : 'disconnected', extra);
  }
}

// STOMP over WebSocket (`/stomp`): topics are channels, the login is presence's info.
export class StompHubClient extends AdapterClient {
  constructor(url, options = {}) {
    super(url, options);
    this._stomp = null;
    this._receipts = new Map(); // receipt id -> {resolve, reject}
    this._next = 1;
  }

  connect() {
    this._wanted = true;
    if (this._stomp) return;
    const { Client } = globalThis.StompJs;
    const c = new Client({
      brokerURL: this.url,
      connectHeaders: { login: this.options.info || '', passcode: this.options.token || '' },
      reconnectDelay: 1000,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
    });
    this._stomp = c;
    this.transport = 'stomp';
    c.onConnect = (frame) => {
      if (this._stomp !== c) return;
      this.clientId = frame.headers.session;
      this._setState('connected', { client: this.clientId });
      this._resubscribeAll();
    };
    c.onStompError = (frame) => {
      this._emit('error', new WsxError(0, frame.headers.message || 'STOMP error'));
    };
    c.onWebSocketClose = (ev) => {
      if (this._stomp !== c) return;
      this._failPending('connection closed');
      this._lost({ code: ev.code, reason: ev.reason, delay: c.reconnectDelay });
    };
    this._setState('connecting');
    c.activate();
  }

  disconnect() {
    this._wanted = false;
    const c = this._stomp;
    this._stomp = null;
    if (c) c.deactivate();
    this._failPending('connection closed');
    this._lost({});
  }

  _failPending(why) {
    for (const p of this._receipts.values()) p.reject(new WsxError(0, why));
    this._receipts.clear();
  }

  // Send with a receipt; resolve with the RECEIPT frame.
  _withReceipt(send) {
    if (!this._stomp || !this._stomp.connected) return Promise.reject(new WsxError(0, 'not connected'));
    const receipt = `r${this._next++}`;
    return new Promise((resolve, reject) => {
      this._receipts.set(receipt, { resolve, reject });
      this._stomp.watchForReceipt(receipt, (frame) => {
        this._receipts.delete(receipt);
        resolve(frame);
      });
      send(receipt);
    });
  }

  async _subscribe(sub) {
    const headers = { id: `sub:${sub.channel}`, 'wsx-presence': 'true' };
    const since = sub._since();
    if (since) Object.assign(headers, { 'wsx-since-offset': String(since.offset), 'wsx-since-epoch': since.epoch });
    try {
      const r = await this._withReceipt((receipt) => {
        sub._stomp = this._stomp.subscribe(`/topic/${sub.channel}`, (m) => this._onMessage(sub, m), { ...headers, receipt });
      });
      const h = r.headers;
      sub._subscribed({
        offset: h['wsx-offset'] !== undefined ? Number(h['wsx-offset']) : undefined,
        epoch: h['wsx-epoch'],
        recovered: h['wsx-recovered'] === undefined ? undefined : h['wsx-recovered'] === 'true',
      });
    } catch (e) {
      if (sub.handlers.onError) sub.handlers.onError(e);
    }
  }

  _onMessage(sub, m) {
    const event = m.headers['wsx-event'];
    const type = m.headers['content-type'] || '';
    let data;
    if (type.startsWith('application/json')) data = JSON.parse(m.body);
    else if (type.startsWith('text/')) data = m.body;
    else data = m.binaryBody;
    if (event === 'join') {
      if (sub.handlers.onJoin) sub.handlers.onJoin(data);
    } else if (event === 'leave') {
      if (sub.handlers.onLeave) sub.handlers.onLeave(data);
    } else {
      const offset = m.headers['wsx-offset'] !== undefined ? Number(m.headers['wsx-offset']) : null;
      sub._publication(data, offset);
    }
  }

  _unsubscribe(sub) {
    this._subs.delete(sub.channel);
    if (sub.active && sub._stomp && this._stomp && this._stomp.connected) sub._stomp.unsubscribe();
    sub.active = false;
    return Promise.resolve();
  }

  async publish(channel, data) {
    await this._withReceipt((receipt) => this._stomp.publish({
      destination: `/topic/${channel}`,
      body: JSON.stringify(data),
      headers: { 'content-type': 'application/json', receipt },
    }));
    return {};
  }

  presence(channel) { return this._http('presence', channel).then((r) => r.presence); }
  history(channel, opts = {}) { return this._http('history', channel, opts); }

  _http(what, channel, opts) {
    if (!this.options.http) return Promise.reject(new WsxError(0, `no ${what} over STOMP`));
    return this.options.http[what](channel, opts);
  }
}

// Socket.IO (`/socket.io/`) with the server's event vocabulary (docs/protocol.md).
export class SocketIoHubClient extends AdapterClient {
  constructor(url, options = {}) {
    super(url, options);
    this._socket = null;
  }

  connect() {
    this._wanted = true;
    if (this._socket) {
      if (!this._socket.connected) this._socket.connect();
      return;
    }
    const s = globalThis.io(this.url, {
      auth: { info: this.options.info || '', token: this.options.token || '' },
      reconnectionDelay: 500,
      reconnectionDelayMax: 20000,
    });
    this._socket = s;
    this._setState('connecting');
    s.on('connect', async () => {
      this.transport = `socket.io/${s.io.engine.transport.name}`;
      s.io.engine.once('upgrade', (t) => { this.transport = `socket.io/${t.name}`; });
      try {
        this.clientId = (await this._call('whoami')).client;
      } catch (e) {
        this._emit('error', e);
        return;
      }
      this._setState('connected', { client: this.clientId });
      // A recovered session kept its subscriptions and replayed what was missed.
      if (s.recovered) {
        for (const sub of this._subs.values()) sub._subscribed({ recovered: true, offset: sub.offset, epoch: sub.epoch });
      } else {
        this._resubscribeAll();
      }
    });
    s.on('disconnect', (reason) => {
      if (reason === 'io server disconnect') this._wanted = false;
      this._lost({ reason });
    });
    s.on('connect_error', (e) => {
      this._emit('error', e);
      if (!s.active) {
        this._wanted = false;
        this._lost({ reason: e.message });
      }
    });
    s.on('publication', (channel, data, meta) => {
      const sub = this._subs.get(channel);
      if (sub) sub._publication(data, meta && meta.offset !== undefined ? meta.offset : null);
    });
    for (const [event, handler] of [['join', 'onJoin'], ['leave', 'onLeave']]) {
      s.on(event, (channel, member) => {
        const sub = this._subs.get(channel);
        if (sub && sub.handlers[handler]) sub.handlers[handler](member);
      });
    }
    s.on('unsubscribed', (channel) => {
      const sub = this._subs.get(channel);
      if (!sub) return;
      sub.active = false;
      this._subs.delete(channel);
      if (sub.handlers.onUnsubscribed) sub.handlers.onUnsubscribed();
    });
  }

  disconnect() {
    this._wanted = false;
    const s = this._socket;
    this._socket = null;
    if (s) {
      s.removeAllListeners();
      s.disconnect();
    }
    this._lost({});
  }

  async _call(event, ...args) {
    if (!this._socket || !this._socket.connected) throw new WsxError(0, 'not connected');
    const r = await this._socket.timeout(10000).emitWithAck(event, ...args);
    if (r.error) throw new WsxError(r.error.code, r.error.message);
    return r.result;
  }

  async _subscribe(sub) {
    const since = sub._since();
    try {
      const r = await this._call('subscribe', sub.channel, since ? { recover: true, ...since } : {});
      sub._subscribed(r);
    } catch (e) {
      if (sub.handlers.onError) sub.handlers.onError(e);
    }
  }

  _unsubscribe(sub) {
    this._subs.delete(sub.channel);
    const was = sub.active;
    sub.active = false;
    return was ? this._call('unsubscribe', sub.channel).catch(() => {}) : Promise.resolve();
  }

  publish(channel, data) { return this._call('publish', channel, data); }
  presence(channel) { return this._call('presence', channel).then((r) => r.presence); }
  history(channel, opts = {}) { return this._call('history', channel, opts); }
}

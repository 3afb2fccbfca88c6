// Shared by the demo pages: a hub client for this server over the protocol the
// switch chose, the switch itself, and a connection-state badge.
import { Client } from '/wsx.js';
import { StompHubClient, SocketIoHubClient } from '/adapters.js';

// What the switch offers: wsx.js's own order, each of its transports, and the other
// protocols the server speaks with their own client libraries (vendored under /vendor/).
export const PROTOCOLS = [
  ['auto', 'Auto (WebSocket, then SSE, then polling)'],
  ['websocket', 'WebSocket'],
  ['sse', 'Server-sent events'],
  ['polling', 'Long-polling'],
  ['sockjs', 'SockJS (sockjs-client)'],
  ['stomp', 'STOMP (stompjs)'],
  ['socketio', 'Socket.IO (socket.io-client)'],
];

const LIBRARIES = {
  sockjs: '/vendor/sockjs.min.js',
  stomp: '/vendor/stomp.umd.min.js',
  socketio: '/vendor/socket.io.min.js',
};

// The protocol in use: `?via=` on the page's URL, else the last one chosen.
export function chosenProtocol() {
  const via = new URLSearchParams(location.search).get('via') || localStorage.getItem('wsx-via') || 'auto';
  return PROTOCOLS.some(([p]) => p === via) ? via : 'auto';
}

function wsBase() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
}

export function hubUrl() {
  return `${wsBase()}/connection/websocket`;
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const el = document.createElement('script');
    el.src = src;
    el.onload = resolve;
    el.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(el);
  });
}

// Presence and history for protocols without them (STOMP): the demo's backend.
const demoHttp = {
  async presence(channel) { return getJson(`/demo/presence?channel=${encodeURIComponent(channel)}`); },
  async history(channel, opts = {}) {
    const q = new URLSearchParams({ channel, limit: String(opts.limit ?? 50), reverse: String(!!opts.reverse) });
    return getJson(`/demo/history?${q}`);
  },
};

async function getJson(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// A hub client over the chosen protocol, with the switch in the page's nav.
export function newClient(options = {}) {
  const via = chosenProtocol();
  mountSwitch(via);
  const opts = { name: 'wsx demo', ...options };
  let client;
  if (via === 'stomp') client = new StompHubClient(`${wsBase()}/stomp`, { ...opts, http: demoHttp });
  else if (via === 'socketio') client = new SocketIoHubClient(location.origin, opts);
  else client = new Client(hubUrl(), via === 'auto' ? opts : { ...opts, transports: [via] });
  client.via = via;
  const lib = LIBRARIES[via];
  if (lib) {
    const ready = loadScript(lib);
    const connect = client.connect.bind(client);
    client.connect = () => ready.then(connect, (e) => client._setState('disconnected', { reason: e.message }));
  }
  return client;
}

// The protocol switch: a select before the state badge; a choice reloads the page.
function mountSwitch(via) {
  const nav = document.querySelector('header nav');
  if (!nav || document.getElementById('via')) return;
  const select = h('select', { id: 'via', 'aria-label': 'Protocol', title: 'Protocol' },
    ...PROTOCOLS.map(([value, label]) => {
      const o = h('option', { value }, label);
      o.selected = value === via;
      return o;
    }));
  select.addEventListener('change', () => {
    localStorage.setItem('wsx-via', select.value);
    const params = new URLSearchParams(location.search);
    params.set('via', select.value);
    location.search = params.toString();
  });
  nav.insertBefore(select, document.getElementById('state'));
}

// How a presence member reached the server, in a few words.
export function memberVia(m) {
  if (!m.protocol) return '';
  if (m.protocol === 'native') return m.transport || 'native';
  return m.transport ? `${m.protocol}/${m.transport}` : m.protocol;
}

// Keep `el` showing the client's state: connecting, connected, reconnecting in N s.
export function showState(client, el) {
  let timer = null;
  client.on('state', (s) => {
    clearInterval(timer);
    el.dataset.state = s.state;
    el.className = `state ${s.state}`;
    if (s.state === 'reconnecting' && s.delay) {
      const until = Date.now() + s.delay;
      const tick = () => {
        el.textContent = `reconnecting in ${Math.max(0, Math.ceil((until - Date.now()) / 1000))} s`;
      };
      tick();
      timer = setInterval(tick, 250);
    } else {
      el.textContent = s.state === 'reconnecting' ? 'reconnecting…' : s.state;
      if (s.state === 'connected' && client.transport) el.textContent += ` · ${client.transport}`;
    }
  });
}

// document.createElement with attributes and children (strings become text nodes).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

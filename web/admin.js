// The admin page: logs in, then listens to /admin/live, where every node of the
// cluster publishes its figures once a second; draws them, and acts through
// /admin/api/* (the login's cookie is sent with each request).
const $ = (id) => document.getElementById(id);
const FIGURES = 'wsx-admin:$figures';
const STALE_MS = 5000; // a node silent this long is gone
const POINTS = 120; // two minutes of chart

const nodes = new Map(); // node id -> { f: figures, seen: ms }
const series = { messages: [], bytes: [] };
let searched = null; // the last search's result, while the box is not empty
let ws = null;
window.admin = { nodes, series };

async function api(method, body) {
  const r = await fetch(`/admin/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body || {}),
  });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(json.error ? json.error.message : r.statusText), { status: r.status });
  return json.result;
}

function setState(state) {
  const el = $('state');
  el.textContent = state;
  el.dataset.state = state;
  el.className = `state ${state === 'live' ? 'connected' : state}`;
}

function showLogin(message) {
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
  $('dashboard').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  setState('disconnected');
}

function showDashboard() {
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('logout').hidden = false;
  connect();
}

async function start() {
  try {
    await api('info');
    showDashboard();
  } catch (e) {
    showLogin(e.status === 401 ? '' : e.message);
  }
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const r = await fetch('/admin/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password: $('password').value }),
  });
  $('password').value = '';
  if (r.ok) return showDashboard();
  const json = await r.json().catch(() => null);
  showLogin(json && json.error ? json.error.message : (await r.text().catch(() => r.statusText)));
});

$('logout').addEventListener('click', async () => {
  await fetch('/admin/logout', { method: 'POST' });
  showLogin('logged out');
});

function connect() {
  if (ws) return;
  setState('connecting');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  ws = new WebSocket(`${scheme}://${location.host}/admin/live`);
  ws.onopen = () => setState('live');
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    const push = msg.push;
    if (!push || push.channel !== FIGURES || !push.pub) return;
    const f = push.pub.data;
    nodes.set(f.node, { f, seen: Date.now() });
  };
  ws.onclose = () => {
    ws = null;
    setState('disconnected');
    // The login may have ended (a restart forgets logins): ask again before reconnecting.
    setTimeout(start, 1000);
  };
}

const fmt = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e4 ? `${(n / 1e3).toFixed(1)}k` : `${Math.round(n * 10) / 10}`);
const us = (v) => (v === null || v === undefined ? '–' : typeof v === 'string' ? v : v >= 1000 ? `${v / 1000} ms` : `${v} µs`);
const age = (s) => (s >= 86400 ? `${Math.floor(s / 86400)}d` : s >= 3600 ? `${Math.floor(s / 3600)}h` : s >= 60 ? `${Math.floor(s / 60)}m` : `${s}s`);

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function rows(tbody, items, make) {
  tbody.replaceChildren(...items.map((it) => {
    const tr = document.createElement('tr');
    make(tr, it);
    return tr;
  }));
}

function sum(list, get) { return list.reduce((a, x) => a + (get(x) || 0), 0); }

function render() {
  const now = Date.now();
  for (const [id, n] of nodes) if (now - n.seen > STALE_MS) nodes.delete(id);
  const all = [...nodes.values()].map((n) => n.f).sort((a, b) => a.node.localeCompare(b.node));
  const rate = (k) => sum(all, (f) => f.rates[k]);
  $('connections').textContent = fmt(sum(all, (f) => f.connections));
  $('channels').textContent = fmt(sum(all, (f) => f.channel_count));
  $('subscriptions').textContent = fmt(sum(all, (f) => f.subscriptions));
  $('msg-in').textContent = fmt(rate('messages_in'));
  $('msg-out').textContent = fmt(rate('messages_out'));
  $('slow').textContent = fmt(sum(all, (f) => f.slow_consumers));
  $('refused').textContent = fmt(sum(all, (f) => f.refused_handshakes));
  $('node-count').textContent = all.length;
  // The worst node's latency: what a publisher somewhere sees.
  const worst = (q) => all.map((f) => f.publish_latency_us[q]).filter((v) => v !== null && v !== undefined)
    .sort((a, b) => (typeof a === 'string' ? 1e12 : a) - (typeof b === 'string' ? 1e12 : b)).pop();
  $('latency').textContent = `${us(worst('p50'))} / ${us(worst('p99'))}`;

  rows($('nodes'), all, (tr, f) => {
    tr.append(cell(f.node), cell(f.address), cell(fmt(f.connections), 'n'), cell(fmt(f.tcp_connections), 'n'), cell(age(f.uptime), 'n'));
    const state = cell(f.draining ? 'draining' : '');
    if (f.draining) state.className = 'draining';
    tr.append(state);
  });

  const by = new Map();
  for (const f of all) for (const b of f.by) {
    const k = `${b.protocol}\u0000${b.transport}`;
    by.set(k, (by.get(k) || 0) + b.n);
  }
  rows($('by'), [...by].sort((a, b) => b[1] - a[1]), (tr, [k, n]) => {
    const [p, t] = k.split('\u0000');
    tr.append(cell(p), cell(t || '–'), cell(fmt(n), 'n'));
  });

  if (!searched) {
    const merged = new Map();
    for (const f of all) for (const [c, n] of f.channels) merged.set(c, (merged.get(c) || 0) + n);
    const list = [...merged].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    $('channels-note').textContent = `largest first: ${list.length} shown of ${fmt(sum(all, (f) => f.channel_count))}`;
    channelRows(list);
  }

  const clients = all.flatMap((f) => f.clients.map((c) => ({ ...c, node: f.node })));
  rows($('clients'), clients, (tr, c) => {
    tr.dataset.client = c.client;
    const via = c.transport ? `${c.protocol}/${c.transport}` : c.protocol;
    tr.append(cell(c.client), cell(c.user || '–'), cell(via), cell(c.name || ''));
    const td = document.createElement('td');
    const b = document.createElement('button');
    b.className = 'ghost disconnect';
    b.textContent = 'Disconnect';
    b.onclick = () => act('disconnect', { client: c.client, reason: 'disconnected from the admin page' });
    td.append(b);
    tr.append(td);
  });

  push(series.messages, now, rate('messages_in'), rate('messages_out'));
  push(series.bytes, now, rate('bytes_in'), rate('bytes_out'));
  draw($('chart-messages'), series.messages);
  draw($('chart-bytes'), series.bytes);
}

function channelRows(list) {
  rows($('channel-list'), list, (tr, [c, n]) => tr.append(cell(c), cell(fmt(n), 'n')));
}

function push(s, t, a, b) {
  s.push({ t, a, b });
  if (s.length > POINTS) s.shift();
}

// A two-line chart of the last POINTS seconds on a canvas.
function draw(canvas, s) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 8, r: 56, t: 8, b: 8 };
  const hi = Math.max(1, ...s.map((p) => Math.max(p.a, p.b))) * 1.1;
  const x = (i) => pad.l + (w - pad.l - pad.r) * (i + POINTS - s.length) / (POINTS - 1);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / hi);
  ctx.strokeStyle = '#eef1f5';
  ctx.fillStyle = '#6b7585';
  ctx.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const v = hi * i / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
    ctx.fillText(fmt(v), w - pad.r + 6, y(v) + 4);
  }
  for (const [key, color] of [['a', '#2f6fde'], ['b', '#1f9d55']]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[key])) : ctx.moveTo(x(i), y(p[key]))));
    ctx.stroke();
  }
}

async function act(method, body) {
  try {
    const r = await api(method, body);
    $('result').textContent = `${method}: ${JSON.stringify(r)}`;
  } catch (e) {
    if (e.status === 401) return showLogin('your login ended: log in again');
    $('result').textContent = `${method} failed: ${e.message}`;
  }
}

$('publish-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  let data;
  try { data = JSON.parse($('pub-data').value); } catch (e) {
    $('result').textContent = `data is not JSON: ${e.message}`;
    return;
  }
  act('publish', { channel: $('pub-channel').value, data });
});

$('disconnect-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act('disconnect', { user: $('dis-user').value, reason: 'disconnected from the admin page' });
});

$('unsub-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act('unsubscribe', { user: $('unsub-user').value, channel: $('unsub-channel').value });
});

$('search-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = $('search').value.trim();
  if (!q) { searched = null; return render(); }
  try {
    const r = await api('search', { q });
    searched = r.channels;
    $('channels-note').textContent = `${r.found} channel(s) match “${q}”${r.found > r.channels.length ? `, the ${r.channels.length} largest shown` : ''}`;
    channelRows(searched);
  } catch (e) {
    $('channels-note').textContent = `search failed: ${e.message}`;
  }
});
$('search').addEventListener('input', () => { if (!$('search').value.trim()) { searched = null; render(); } });

setInterval(() => { if (!$('dashboard').hidden) render(); }, 1000);
start();

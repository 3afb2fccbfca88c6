// Live chart of ticks:SIM, drawn on a canvas. Ticks carry a sequence number; a reconnect
// recovers the missed ones (or, after a server restart, refills from the new history).
import { newClient, showState } from '/demo.js';

const $ = (id) => document.getElementById(id);
const CHANNEL = 'ticks:SIM';
const WINDOW = 600; // ticks shown: 30 s at 20 Hz
let points = []; // {seq, t, price}, ordered by seq
let epoch = null;
let dirty = true;
let received = 0;
const stats = { refills: 0, recovered: 0 };

const client = newClient({ info: 'chart' });
showState(client, $('state'));
window.chart = { client, stats, get points() { return points; }, get epoch() { return epoch; } };

function add(p) {
  received += 1;
  const last = points[points.length - 1];
  if (!last || p.seq > last.seq) points.push(p);
  else if (!points.some((q) => q.seq === p.seq)) {
    points.push(p);
    points.sort((a, b) => a.seq - b.seq);
  }
  if (points.length > WINDOW) points = points.slice(points.length - WINDOW);
  dirty = true;
}

async function refill() {
  // History of the current epoch: replace what we have.
  const r = await client.history(CHANNEL, { limit: WINDOW, reverse: true });
  const fresh = r.publications.map((p) => p.data).reverse();
  const newer = points.filter((p) => p.seq > (fresh.length ? fresh[fresh.length - 1].seq : -1));
  points = [...fresh, ...newer].slice(-WINDOW);
  stats.refills += 1;
  dirty = true;
}

client.subscribe(CHANNEL, {
  onPublication: (data) => add(data),
  onSubscribed: (s) => {
    if (s.recovered === true) {
      stats.recovered += 1;
      return;
    }
    // First subscription, or the server lost history (a restart: new epoch).
    if (epoch !== null && s.epoch !== epoch) points = [];
    epoch = s.epoch;
    refill().catch((e) => console.error('history failed', e));
  },
});
client.connect();

function draw() {
  requestAnimationFrame(draw);
  if (!dirty) return;
  dirty = false;
  const canvas = $('chart');
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const hgt = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(hgt * dpr); }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  const pad = { l: 12, r: 64, t: 12, b: 28 };
  const cw = w - pad.l - pad.r;
  const ch = hgt - pad.t - pad.b;
  ctx.font = '12px system-ui, sans-serif';
  if (points.length < 2) {
    ctx.fillStyle = '#6b7585';
    ctx.fillText('waiting for ticks…', pad.l + 8, pad.t + 20);
    return;
  }
  const first = points[0];
  const last = points[points.length - 1];
  let lo = Math.min(...points.map((p) => p.price));
  let hi = Math.max(...points.map((p) => p.price));
  const margin = Math.max((hi - lo) * 0.1, 0.05);
  lo -= margin; hi += margin;
  const t0 = last.t - (WINDOW / 20) * 1000;
  const x = (t) => pad.l + ((t - t0) / (last.t - t0)) * cw;
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * ch;
  // Grid and labels.
  ctx.strokeStyle = '#eef1f5';
  ctx.fillStyle = '#6b7585';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + cw, yy); ctx.stroke();
    ctx.fillText(v.toFixed(2), pad.l + cw + 8, yy + 4);
  }
  for (let s = 0; s <= 30; s += 5) {
    const t = last.t - s * 1000;
    const xx = Math.round(x(t)) + 0.5;
    ctx.beginPath(); ctx.moveTo(xx, pad.t); ctx.lineTo(xx, pad.t + ch); ctx.stroke();
    ctx.fillText(s === 0 ? 'now' : `-${s}s`, xx - 10, hgt - 8);
  }
  // The line, broken where ticks are missing.
  const up = last.price >= first.price;
  ctx.strokeStyle = up ? '#1f9d55' : '#d64545';
  ctx.lineWidth = 2;
  ctx.beginPath();
  let prev = null;
  for (const p of points) {
    if (p.t < t0) continue;
    if (prev && p.seq === prev.seq + 1) ctx.lineTo(x(p.t), y(p.price));
    else ctx.moveTo(x(p.t), y(p.price));
    prev = p;
  }
  ctx.stroke();
  ctx.fillStyle = ctx.strokeStyle;
  ctx.beginPath(); ctx.arc(x(last.t), y(last.price), 3.5, 0, 2 * Math.PI); ctx.fill();
  $('price').textContent = last.price.toFixed(2);
  const change = last.price - first.price;
  $('change').textContent = `${change >= 0 ? '+' : ''}${change.toFixed(2)} (${((change / first.price) * 100).toFixed(2)}%) over ${Math.round((last.t - first.t) / 1000)} s`;
  $('change').className = `change ${change >= 0 ? 'up' : 'down'}`;
  $('stats').textContent = `${received} ticks received · last #${last.seq} · gaps refilled from history: ${stats.refills}, recovered: ${stats.recovered}`;
}
requestAnimationFrame(draw);

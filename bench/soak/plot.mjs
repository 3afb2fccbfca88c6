// Plots a soak's samples (OUT/samples.csv, OUT/summary.json) as OUT/soak.png: the
// server's RSS and open descriptors, the delivery latency's p50 and p99, and the live
// subscribers with the deliveries per second, over time. Drawn on canvases in
// Chromium (the one the browser tests use), so no plotting library is needed.
// usage: node plot.mjs OUT_DIR
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [out] = process.argv.slice(2);
const rows = fs.readFileSync(path.join(out, 'samples.csv'), 'utf8').trim().split('\n').slice(1)
  .map((l) => l.split(',').map((v) => (v === '' ? null : Number(v))));
const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
const col = (i) => rows.map((r) => [r[0], r[i]]).filter(([, v]) => v !== null);
const charts = [
  { title: 'server RSS (MiB)', lines: [['RSS', '#2f6fde', col(1).map(([t, v]) => [t, v / 1024])]] },
  { title: 'server open file descriptors', lines: [['fds', '#2f6fde', col(2)]] },
  // Scaled to what follows the warm-up (the first tenth: every client connecting and
  // the churn starting at once); the warm-up's higher values are cut at the top.
  { title: 'delivery latency per 10 s (ms), after warm-up', lines: [['p50', '#1f9d55', col(5)], ['p99', '#d64545', col(6)]], warm: 0.1 },
  { title: 'live subscribers, deliveries per second', lines: [['live', '#2f6fde', col(3)], ['delivered/s', '#1f9d55', col(4)]] },
];
const caption = `${summary.connections} connections, ${summary.seconds} s, ${summary.rate} publications/s over ${summary.channels} channels; `
  + `${summary.publications_in_streams} publications, ${summary.delivered} deliveries, ${summary.reconnects} reconnects, `
  + `${summary.violations} lost or out of order; burst: ${summary.burst.open} open, ${JSON.stringify(summary.burst.refused)} refused, ${summary.burst.hung} hung`;

const html = `<!doctype html><html><body style="margin:0;font:13px system-ui,sans-serif;background:#fff">
<p style="margin:8px 12px">${caption}</p><div id="c"></div>
<script>
const charts = ${JSON.stringify(charts)};
function tMaxOf(points) { return Math.max(1, ...points.map((p) => p[0])); }
for (const ch of charts) {
  const c = document.createElement('canvas');
  c.width = 1000; c.height = 220;
  document.getElementById('c').append(c);
  const g = c.getContext('2d');
  const pad = { l: 60, r: 20, t: 24, b: 24 };
  const all = ch.lines.flatMap((l) => l[2]);
  const tMax = Math.max(1, ...all.map((p) => p[0]));
  const scaled = all.filter((p) => p[0] >= tMaxOf(all) * (ch.warm || 0));
  const hi = Math.max(1, ...scaled.map((p) => p[1])) * 1.1;
  const x = (t) => pad.l + (c.width - pad.l - pad.r) * t / tMax;
  const y = (v) => pad.t + (c.height - pad.t - pad.b) * (1 - Math.min(v, hi) / hi);
  g.font = '12px system-ui'; g.fillStyle = '#1d2430'; g.fillText(ch.title, pad.l, 16);
  g.strokeStyle = '#e3e7ee'; g.fillStyle = '#6b7585';
  for (let i = 0; i <= 4; i++) {
    const v = hi * i / 4;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(c.width - pad.r, y(v)); g.stroke();
    g.fillText(v >= 100 ? Math.round(v) : v.toFixed(1), 6, y(v) + 4);
  }
  for (let i = 0; i <= 5; i++) g.fillText(Math.round(tMax * i / 5) + ' s', x(tMax * i / 5) - 12, c.height - 6);
  let lx = c.width - pad.r - 200;
  for (const [name, color, pts] of ch.lines) {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    pts.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
    g.fillStyle = color; g.fillRect(lx, 8, 12, 3); g.fillText(name, lx + 16, 14); lx += 90;
  }
}
</script></body></html>`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 960 } });
  await page.setContent(html);
  await page.screenshot({ path: path.join(out, 'soak.png'), fullPage: true });
} finally {
  await browser.close();
}
console.error(`plotted ${path.join(out, 'soak.png')}`);

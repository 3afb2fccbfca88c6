// The admin page in Chromium against a real `wsx serve`: its endpoints refuse requests
// without a login, a wrong password is refused, the right one opens the live figures; a
// client that connects appears, the message rate moves while publications flow, and
// the Disconnect button drops the client (which sees its connection closed).
// usage: node admin.mjs WSX_BIN PORT SCREENSHOT
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Server, launch, watch } from './lib.mjs';

const PASSWORD = 'admin-test-password-42';
const [wsxBin, port, screenshot] = process.argv.slice(2);
const server = await new Server(wsxBin, port, ['--admin-password', PASSWORD, '--demo', 'off']).start();
const base = server.base;

// A native client of our own (Node's `ws`): its client id once connected and subscribed.
function probe() {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/connection/websocket`);
  const received = [];
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: String(reason) })));
  const ready = new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('open', () => {
      ws.send(JSON.stringify({ id: 1, connect: { name: 'admin-probe' } }));
      ws.send(JSON.stringify({ id: 2, subscribe: { channel: 'probe-room' } }));
    });
    let client = null;
    ws.on('message', (m) => {
      const msg = JSON.parse(String(m));
      if (msg.id === 1) client = msg.connect.client;
      if (msg.id === 2) resolve(client);
      if (msg.push && msg.push.pub) received.push(msg.push.pub.data);
    });
  });
  return { ws, ready, closed, received };
}

// Without a login: every endpoint of the page refuses.
for (const method of ['info', 'publish', 'disconnect', 'search']) {
  const r = await fetch(`${base}/admin/api/${method}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}',
  });
  assert.equal(r.status, 401, method);
}
const forged = await fetch(`${base}/admin/api/info`, {
  method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: 'wsx_admin=0123456789abcdef' }, body: '{}',
});
assert.equal(forged.status, 401, 'a made-up session');
const liveStatus = await new Promise((resolve) => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/admin/live`, { headers: { Origin: base } });
  ws.on('unexpected-response', (_, res) => resolve(res.statusCode));
  ws.on('open', () => resolve(101));
  ws.on('error', () => {});
});
assert.equal(liveStatus, 401, 'the live feed without a login');

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  const page = await context.newPage();
  const errors = watch(page, 'admin');
  await page.goto(`${base}/admin`);
  await page.waitForSelector('#login:not([hidden])');

  // A wrong password: refused, no cookie.
  await page.fill('#password', 'not-the-password');
  await page.click('#login-form button');
  await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('wrong password'));
  assert.equal((await context.cookies()).length, 0);

  // The right one: a session cookie the page's script cannot read, and the live feed.
  await page.fill('#password', PASSWORD);
  await page.click('#login-form button');
  await page.waitForSelector('#dashboard:not([hidden])');
  const [cookie] = await context.cookies();
  assert.equal(cookie.name, 'wsx_admin');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '');
  await page.waitForFunction(() => document.getElementById('state').dataset.state === 'live');
  await page.waitForFunction(() => document.getElementById('node-count').textContent === '1');

  // A client connects: it appears, with its name, and its channel.
  const p = probe();
  const client = await p.ready;
  const row = `#clients tr[data-client="${client}"]`;
  // A node's figures may have been taken between the connection's start and its
  // connect (no name yet): wait for the row with the name.
  await page.waitForSelector(row);
  await page.waitForFunction((sel) => /admin-probe/.test(document.querySelector(sel)?.textContent || ''), row);
  assert.match(await page.textContent(row), /admin-probe/);
  await page.waitForFunction(() => [...document.querySelectorAll('#channel-list td')].some((td) => td.textContent === 'probe-room'));

  // Publications flow to it: the outgoing message rate moves above zero.
  const before = await page.textContent('#msg-out');
  let n = 0;
  const publishing = setInterval(() => { server.api('publish', { channel: 'probe-room', data: { n: n++ } }).catch(() => {}); }, 25);
  // WSX_ADMIN_SHOT_SECONDS=N: publish at a varying rate for N s first (a screenshot
  // with some history, for the README).
  const extra = Number(process.env.WSX_ADMIN_SHOT_SECONDS || 0);
  const burst = [];
  for (let s = 0; s < extra; s++) {
    for (let i = 0; i < 20 * (1 + Math.sin(s / 4)); i++) burst.push(server.api('publish', { channel: `room-${i % 3}`, data: { s, i } }));
    for (let i = 0; i < 15 * (1 + Math.cos(s / 5)); i++) p.ws.send(JSON.stringify({ id: 100 + s * 100 + i, publish: { channel: 'probe-room', data: { s, i } } }));
    await new Promise((r) => setTimeout(r, 1000));
  }
  await Promise.all(burst);
  try {
    await page.waitForFunction(() => parseFloat(document.getElementById('msg-out').textContent) >= 10, null, { timeout: 15000 });
    await page.waitForFunction(() => window.admin.series.messages.filter((pt) => pt.b >= 10).length >= 2);
  } finally {
    clearInterval(publishing);
  }
  assert.ok(p.received.length > 0, 'the probe got publications');
  console.error(`message rate before: ${before}, while publishing: ${await page.textContent('#msg-out')}`);

  // Search every node's channels.
  await page.fill('#search', 'probe');
  await page.click('#search-form button');
  await page.waitForFunction(() => document.getElementById('channels-note').textContent.includes('1 channel(s) match'));
  await page.fill('#search', '');
  await page.screenshot({ path: screenshot, fullPage: true });

  // A test message from the page reaches the client.
  await page.fill('#pub-channel', 'probe-room');
  await page.fill('#pub-data', '{"from":"admin"}');
  await page.click('#publish-form button');
  await page.waitForFunction(() => document.getElementById('result').textContent.startsWith('publish: {"offset"'));
  const deadline = Date.now() + 5000;
  while (!p.received.some((d) => d && d.from === 'admin')) {
    assert.ok(Date.now() < deadline, 'the test message arrived');
    await new Promise((r) => setTimeout(r, 20));
  }

  // Disconnect it from the page: its connection closes, and it leaves the list.
  await page.click(`${row} button.disconnect`);
  const closed = await p.closed;
  assert.equal(closed.code, 3000);
  assert.equal(closed.reason, 'disconnected from the admin page');
  await page.waitForSelector(row, { state: 'detached' });

  // Logging out ends the session: the endpoints refuse the old cookie.
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  const after = await fetch(`${base}/admin/api/info`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: `wsx_admin=${cookie.value}` }, body: '{}',
  });
  assert.equal(after.status, 401, 'the cookie after logout');
  assert.deepEqual(errors, []);
  console.log('OK');
} finally {
  await browser.close();
  await server.stop();
}

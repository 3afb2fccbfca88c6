// web/wsx.js in Chromium against a real `wsx serve`: reconnect with backoff, recovery of
// missed messages after a server-side disconnect, and reconnect after a server restart
// (where recovery is refused: a new epoch).
// usage: node js_client.mjs WSX_BIN PORT SCREENSHOT
import assert from 'node:assert/strict';
import { Server, launch } from './lib.mjs';

const [wsxBin, port, screenshot] = process.argv.slice(2);
const server = await new Server(wsxBin, port).start();
const base = server.base;
const api = (method, body) => server.api(method, body);

const browser = await launch();
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error('page:', m.text()));
  await page.goto(`${base}/`);
  await page.evaluate(async (url) => {
    const { Client } = await import('/wsx.js');
    window.events = [];
    window.pubs = [];
    window.client = new Client(url, { minReconnectDelay: 1500, maxReconnectDelay: 3000 });
    window.client.on('state', (s) => window.events.push({ state: s.state, delay: s.delay }));
    window.client.subscribe('feed', {
      onPublication: (data) => window.pubs.push(data),
      onSubscribed: (s) => window.events.push({ subscribed: s.recovered === undefined ? null : s.recovered }),
    });
    window.client.connect();
  }, `ws://127.0.0.1:${port}/connection/websocket`);
  const subscribedCount = () => page.evaluate(() => window.events.filter((e) => 'subscribed' in e).length);
  await page.waitForFunction(() => window.events.some((e) => 'subscribed' in e));

  // Live publications.
  for (let i = 0; i < 3; i++) await api('publish', { channel: 'feed', data: `live ${i}` });
  await page.waitForFunction(() => window.pubs.length === 3);

  // The server drops the client (reconnect advised); ten publications happen while it is away.
  const clientId = await page.evaluate(() => window.client.clientId);
  const d = await api('disconnect', { client: clientId, code: 3002, reason: 'test', reconnect: true });
  assert.equal(d.disconnected, 1);
  await page.waitForFunction(() => window.client.state === 'reconnecting');
  for (let i = 0; i < 10; i++) await api('publish', { channel: 'feed', data: `missed ${i}` });
  await page.waitForFunction(() => window.pubs.length === 13, null, { timeout: 20000 });
  let pubs = await page.evaluate(() => window.pubs);
  assert.deepEqual(pubs, [...[0, 1, 2].map((i) => `live ${i}`), ...[...Array(10).keys()].map((i) => `missed ${i}`)]);
  let events = await page.evaluate(() => window.events);
  assert.deepEqual(events.filter((e) => 'subscribed' in e).map((e) => e.subscribed), [null, true], JSON.stringify(events));
  const delays = events.filter((e) => e.state === 'reconnecting' && e.delay !== undefined).map((e) => e.delay);
  assert.ok(delays.length >= 1 && delays.every((x) => x >= 750 && x <= 1500), `backoff with jitter: ${delays}`);

  // The server restarts: the client reconnects by itself; history is gone (new epoch),
  // so it is told `recovered: false` instead of receiving a partial stream.
  await server.stop();
  await page.waitForFunction(() => window.client.state === 'reconnecting');
  await server.start();
  await page.waitForFunction((n) => window.events.filter((e) => 'subscribed' in e).length > n, (await subscribedCount()) - 1, { timeout: 30000 });
  await page.waitForFunction(() => window.client.state === 'connected');
  events = await page.evaluate(() => window.events);
  assert.equal(events.filter((e) => 'subscribed' in e).at(-1).subscribed, false, JSON.stringify(events));
  await api('publish', { channel: 'feed', data: 'after restart' });
  await page.waitForFunction(() => window.pubs.at(-1) === 'after restart');
  pubs = await page.evaluate(() => window.pubs);
  assert.equal(pubs.length, 14, 'nothing duplicated across the restart');
  await page.screenshot({ path: screenshot });
  console.log('OK', JSON.stringify(events.map((e) => e.state || `subscribed:${e.subscribed}`)));
} finally {
  await browser.close();
  await server.stop().catch(() => {});
}

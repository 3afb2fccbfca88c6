// The demo pages' protocol switch in Chromium against a real `wsx serve`: the same
// pages over native WebSocket, SSE, long-polling, SockJS (sockjs-client), STOMP
// (stompjs) and Socket.IO (socket.io-client), the libraries from /vendor/.
// - chat: six windows in one room, one per protocol; each sees all six members with how
//   they are connected, and every message from every other window, in one order;
// - grading: a submission's verdicts over each protocol;
// - chart: ticks over each protocol, a server-side drop, recovery with no gap;
// - blocked: with WebSocket removed from the browser, the switch's automatic choice
//   falls back (SSE) and chat, grading and chart all work, with recovery.
// usage: node demo_switch.mjs WSX_BIN PORT [chat|grading|chart|blocked ...]
import assert from 'node:assert/strict';
import { Server, launch, watch } from './lib.mjs';

const [wsxBin, port, ...only] = process.argv.slice(2);
const wanted = (name) => only.length === 0 || only.includes(name);
// A generous time limit: the grading runs check that verdicts arrive over each
// protocol, not the judge's timing on a loaded machine.
const server = await new Server(wsxBin, port, ['--demo-judge-time-limit', '20s']).start();
const browser = await launch();
const errors = [];
const PROTOCOLS = ['websocket', 'sse', 'polling', 'sockjs', 'stomp', 'socketio'];
// What presence shows for each (SockJS: the transport sockjs-client chose).
const SHOWN = {
  websocket: /^websocket$/,
  sse: /^sse$/,
  polling: /^polling$/,
  sockjs: /^sockjs\/(websocket|xhr-streaming|eventsource|xhr-polling)$/,
  stomp: /^stomp\/websocket$/,
  socketio: /^socketio$/,
};

async function open(path, name, { blockWebSocket = false } = {}) {
  const ctx = await browser.newContext();
  if (blockWebSocket) await ctx.addInitScript(() => { delete window.WebSocket; });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  errors.push(watch(page, name));
  await page.goto(`${server.base}${path}`);
  return page;
}

const connected = (page, global) => page.waitForFunction((g) => window[g].client.state === 'connected', global);

async function chatAcross(protocols, blockWebSocket) {
  const room = `switch-${Date.now()}`;
  const pages = [];
  for (const via of protocols) {
    const page = await open(`/chat?room=${room}&nick=n-${via}&via=${via}`, `chat-${via}`, { blockWebSocket });
    await connected(page, 'chat');
    assert.equal(await page.inputValue('#via'), via, 'the switch shows the protocol in use');
    pages.push([via, page]);
  }
  const n = pages.length;
  for (const [via, page] of pages) {
    await page.waitForFunction((k) => document.querySelectorAll('#members li').length === k, n);
    const members = await page.$$eval('#members li', (lis) => lis.map((li) => [li.querySelector('.nick').textContent, li.dataset.via]));
    for (const [v] of pages) {
      const m = members.find(([nick]) => nick === `n-${v}`);
      assert.ok(m, `${via} sees n-${v}: ${JSON.stringify(members)}`);
      if (!blockWebSocket) assert.match(m[1], SHOWN[v], `${via} sees how n-${v} is connected`);
    }
  }
  for (const [via, page] of pages) {
    await page.fill('#text', `hello from ${via}`);
    await page.press('#text', 'Enter');
  }
  const orders = [];
  for (const [via, page] of pages) {
    await page.waitForFunction((k) => document.querySelectorAll('#messages li').length === k, n);
    const got = await page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
    for (const [v] of pages) assert.ok(got.some((t) => t.includes(`hello from ${v}`)), `${via} got ${v}'s message: ${JSON.stringify(got)}`);
    orders.push(got.join('|'));
  }
  assert.equal(new Set(orders).size, 1, `every window shows one order: ${JSON.stringify(orders)}`);
  // One leaves (the last: WebSocket or a stream, whose end the server sees at once; a
  // long-polling client that vanishes is noticed at its heartbeat timeout): the others'
  // member lists drop it, whatever protocol they are on.
  const [, gone] = pages.pop();
  await gone.context().close();
  for (const [, page] of pages) await page.waitForFunction((k) => document.querySelectorAll('#members li').length === k, n - 1);
  for (const [, page] of pages) await page.context().close();
}

async function grade(via, opts) {
  const page = await open(`/grading?via=${via}`, `grading-${via}`, opts);
  await page.waitForFunction(() => !document.querySelector('#submit').disabled);
  await page.click('button:text-is("Submit")');
  await page.waitForFunction(() => document.querySelectorAll('#cases tr[data-case]:not([data-verdict])').length === 0 && !document.querySelector('#summary').hidden, null, { timeout: 60000 });
  const verdicts = await page.$$eval('#cases tr[data-case]', (rows) => rows.map((r) => r.dataset.verdict));
  assert.ok(verdicts.length >= 10 && verdicts.every((v) => v === 'AC'), `${via}: ${verdicts}`);
  assert.match(await page.textContent('#summary'), /Accepted/);
  const transport = await page.evaluate(() => window.judge.client.transport);
  await page.context().close();
  return transport;
}

async function chartRecovers(via, opts) {
  const page = await open(`/chart?via=${via}`, `chart-${via}`, opts);
  const contiguous = () => page.evaluate(() => {
    const p = window.chart.points;
    return { n: p.length, last: p.at(-1)?.seq, gaps: p.slice(1).filter((x, i) => x.seq !== p[i].seq + 1).map((x) => x.seq) };
  });
  await page.waitForFunction(() => window.chart.points.length >= 40);
  const before = await contiguous();
  assert.deepEqual(before.gaps, [], `${via}: ${JSON.stringify(before)}`);
  const client = await page.evaluate(() => window.chart.client.clientId);
  const transport = await page.evaluate(() => window.chart.client.transport);
  await server.api('disconnect', { client, code: 3002, reason: 'test', reconnect: true });
  await page.waitForFunction(() => window.chart.client.state !== 'connected');
  await page.waitForFunction(() => window.chart.stats.recovered >= 1 && window.chart.client.state === 'connected');
  await page.waitForFunction((n) => window.chart.points.at(-1).seq > n + 20, before.last);
  const after = await contiguous();
  assert.deepEqual(after.gaps, [], `${via}: recovered across the drop: ${JSON.stringify(after)}`);
  await page.context().close();
  return transport;
}

try {
  if (wanted('chat')) await chatAcross(PROTOCOLS, false);
  if (wanted('grading')) for (const via of PROTOCOLS) await grade(via);
  if (wanted('chart')) for (const via of PROTOCOLS) console.error('chart', via, await chartRecovers(via));
  if (wanted('blocked')) {
    const opts = { blockWebSocket: true };
    assert.equal(await chartRecovers('auto', opts), 'sse');
    assert.equal(await grade('auto', opts), 'sse');
    // Socket.IO falls back to its own long-polling; the others as chosen.
    assert.equal(await chartRecovers('socketio', opts), 'socket.io/polling');
    await chatAcross(['polling', 'socketio', 'auto'], true);
  }
  const thrown = errors.flat();
  assert.deepEqual(thrown, [], 'errors on the pages');
  console.log('OK');
} finally {
  await browser.close();
  await server.stop().catch(() => {});
}

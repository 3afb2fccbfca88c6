// socket.io-client 4 (its browser bundle from the registry's package) in Chromium
// against `wsx serve`'s /socket.io/: polling then the upgrade to the browser's
// WebSocket, polling only, a publication from the HTTP API, binary both ways
// (ArrayBuffer), and recovery after the transport drops.
// usage: node socketio.mjs WSX_BIN PORT
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Server, launch, watch } from './lib.mjs';

// Run from the repository's root, where scripts/test installed node_modules.
const bundle = path.resolve('node_modules/socket.io-client/dist/socket.io.min.js');
const [wsxBin, port] = process.argv.slice(2);
const config = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wsx-sio-browser-')), 'ns.toml');
fs.writeFileSync(config, '[namespaces.default]\nhistory_size = 100\n');
const server = await new Server(wsxBin, port, ['--demo', 'off', '--config', config]).start();
const browser = await launch();
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  const errors = watch(page, 'socketio');
  await page.goto(`${server.base}/console`);
  await page.addScriptTag({ path: bundle });

  // Default transports: polling first, then the upgrade.
  const first = await page.evaluate(async () => {
    window.got = [];
    window.s = io({ reconnection: false });
    let firstTransport;
    s.io.once('open', () => { firstTransport = s.io.engine.transport.name; });
    s.on('publication', (channel, data, meta) => window.got.push({ channel, data, meta }));
    await new Promise((resolve, reject) => { s.once('connect', resolve); s.once('connect_error', reject); });
    if (s.io.engine.transport.name !== 'websocket') {
      await new Promise((r) => s.io.engine.once('upgrade', r));
    }
    const sub = await s.emitWithAck('subscribe', 'web-sio');
    return { firstTransport, now: s.io.engine.transport.name, sub };
  });
  assert.deepEqual(first, { firstTransport: 'polling', now: 'websocket', sub: { result: { offset: 0, epoch: first.sub.result.epoch } } });

  // A publication from the HTTP API, then binary from the page to itself.
  await server.api('publish', { channel: 'web-sio', data: { from: 'api' } });
  await page.waitForFunction(() => window.got.length === 1);
  const ack = await page.evaluate(() => s.emitWithAck('publish', 'web-sio', new Uint8Array([0xff, 0, 1]).buffer));
  await page.waitForFunction(() => window.got.length === 2);
  const bin = await page.evaluate(() => {
    const d = window.got[1].data;
    return { isBinary: d instanceof ArrayBuffer, bytes: Array.from(new Uint8Array(d)) };
  });
  assert.deepEqual(ack, { result: { offset: 2 } });
  assert.deepEqual(window_got0(await page.evaluate(() => window.got[0])), { channel: 'web-sio', data: { from: 'api' }, offset: 1 });
  assert.deepEqual(bin, { isBinary: true, bytes: [0xff, 0, 1] });

  // Recovery: the transport drops, two publications go by, the client comes back.
  await page.evaluate(async () => {
    const down = new Promise((r) => s.once('disconnect', r));
    s.io.engine.close();
    await down;
  });
  await server.api('publish', { channel: 'web-sio', data: 3 });
  await server.api('publish', { channel: 'web-sio', data: 4 });
  const recovered = await page.evaluate(async () => {
    s.connect();
    await new Promise((r) => s.once('connect', r));
    return s.recovered;
  });
  assert.equal(recovered, true);
  await page.waitForFunction(() => window.got.length === 4);
  assert.deepEqual(await page.evaluate(() => window.got.slice(2).map((g) => g.data)), [3, 4]);

  // Polling only.
  const polling = await page.evaluate(async () => {
    const p = io({ reconnection: false, forceNew: true, transports: ['polling'] });
    await new Promise((r) => p.once('connect', r));
    await p.emitWithAck('subscribe', 'web-poll');
    const got = new Promise((r) => p.once('publication', (ch, data) => r(data)));
    await p.emitWithAck('publish', 'web-poll', 'over polling');
    const data = await got;
    const transport = p.io.engine.transport.name;
    p.disconnect();
    return { data, transport };
  });
  assert.deepEqual(polling, { data: 'over polling', transport: 'polling' });
  assert.deepEqual(errors, []);
  console.log('OK socket.io-client in chromium');
} finally {
  await browser.close();
  await server.stop();
}

function window_got0(g) {
  return { channel: g.channel, data: g.data, offset: g.meta.offset };
}

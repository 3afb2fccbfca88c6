// @stomp/stompjs (its UMD bundle from the registry's package) in Chromium against
// `wsx serve`'s /stomp, over the browser's own WebSocket: connect, a receipt, a
// publication from the HTTP API arriving as JSON, a binary body (not UTF-8: a text
// message would make the browser fail the connection), a queue with client acks.
// usage: node stompjs.mjs WSX_BIN PORT
import assert from 'node:assert/strict';
import path from 'node:path';
import { Server, launch, watch } from './lib.mjs';

// Run from the repository's root, where scripts/test installed node_modules.
const bundle = path.resolve('node_modules/@stomp/stompjs/bundles/stomp.umd.js');
const [wsxBin, port] = process.argv.slice(2);
const server = await new Server(wsxBin, port, ['--demo', 'off']).start();
const browser = await launch();
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  const errors = watch(page, 'stompjs');
  await page.goto(`${server.base}/console`);
  await page.addScriptTag({ path: bundle });
  const connected = await page.evaluate(async (url) => {
    window.got = [];
    window.client = new StompJs.Client({ brokerURL: url, reconnectDelay: 0, debug: () => {} });
    const frame = await new Promise((resolve, reject) => {
      client.onConnect = resolve;
      client.onStompError = (f) => reject(new Error(f.headers.message));
      client.onWebSocketError = () => reject(new Error('websocket error'));
      client.activate();
    });
    const subscribed = new Promise((r) => client.watchForReceipt('s1', r));
    client.subscribe('/topic/web-x', (m) => window.got.push({
      text: m.body,
      bytes: Array.from(m.binaryBody),
      type: m.headers['content-type'],
    }), { receipt: 's1' });
    await subscribed;
    return { version: frame.headers.version, protocol: client.webSocket.protocol };
  }, `ws://127.0.0.1:${port}/stomp`);
  assert.deepEqual(connected, { version: '1.2', protocol: 'v12.stomp' });

  await server.api('publish', { channel: 'web-x', data: { from: 'api', n: 1 } });
  await page.evaluate(() => client.publish({ destination: '/topic/web-x', binaryBody: new Uint8Array([0xff, 0, 0xc3, 0x28]) }));
  await page.waitForFunction(() => window.got.length === 2);
  const got = await page.evaluate(() => window.got);
  assert.deepEqual(JSON.parse(got[0].text), { from: 'api', n: 1 });
  assert.equal(got[0].type, 'application/json');
  assert.deepEqual(got[1].bytes, [0xff, 0, 0xc3, 0x28]);
  assert.equal(got[1].type, 'application/octet-stream');

  // A queue with client-individual acks: every job once, acked.
  const jobs = await page.evaluate(async () => {
    const seen = [];
    const ready = new Promise((r) => client.watchForReceipt('q1', r));
    const done = new Promise((resolve) => {
      client.subscribe('/queue/web-jobs', (m) => {
        seen.push(m.body);
        m.ack();
        if (seen.length === 5) resolve();
      }, { ack: 'client-individual', receipt: 'q1' });
    });
    await ready;
    for (let i = 0; i < 5; i++) client.publish({ destination: '/queue/web-jobs', body: `job${i}` });
    await done;
    const connectedStill = client.connected;
    await client.deactivate();
    return { seen, connectedStill };
  });
  assert.deepEqual(jobs.seen, ['job0', 'job1', 'job2', 'job3', 'job4']);
  assert.equal(jobs.connectedStill, true);
  assert.deepEqual(errors, []);
  console.log('OK');
} finally {
  await browser.close();
  await server.stop();
}

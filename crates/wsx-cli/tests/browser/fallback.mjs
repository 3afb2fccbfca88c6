// web/wsx.js in Chromium when WebSocket cannot get through: with `WebSocket` removed
// from the page it falls back to server-sent events; with `EventSource` removed too, to
// long-polling; `transports` forces one (sockjs with the vendored sockjs-client). On
// each: subscribe, a publication from the HTTP API, a publish, then a server-side drop
// (HTTP API disconnect) after which the client comes back and recovers exactly what it
// missed.
// usage: node fallback.mjs WSX_BIN PORT
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Server, launch, watch } from './lib.mjs';

const [wsxBin, port] = process.argv.slice(2);
const config = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wsx-fallback-')), 'ns.toml');
fs.writeFileSync(config, '[namespaces.default]\nhistory_size = 100\n');
const server = await new Server(wsxBin, port, ['--demo', 'off', '--config', config, '--token-hmac-secret', 'fallback-secret-0123456789abcdef', '--allow-anonymous', 'on']).start();
const browser = await launch();
const cases = [
  { name: 'sse', remove: ['WebSocket'], want: 'sse' },
  { name: 'polling', remove: ['WebSocket', 'EventSource'], want: 'polling' },
  { name: 'forced polling', transports: ['polling'], want: 'polling' },
  { name: 'sockjs', transports: ['sockjs'], sockjs: true, want: 'sockjs' },
];
try {
  for (const c of cases) {
    const page = await browser.newPage();
    page.setDefaultTimeout(20000);
    const errors = watch(page, c.name);
    await page.goto(`${server.base}/console`);
    if (c.sockjs) await page.addScriptTag({ url: '/vendor/sockjs.min.js' });
    const channel = `fb-${c.name.replace(' ', '-')}`;
    const user = `user-${c.name.replace(' ', '-')}`;
    const transport = await page.evaluate(async ([c, channel, user]) => {
      for (const name of c.remove || []) window[name] = undefined;
      const { Client } = await import('/wsx.js');
      window.got = [];
      window.states = [];
      const opts = { minReconnectDelay: 50, maxReconnectDelay: 200, info: user };
      if (c.transports) opts.transports = c.transports;
      window.client = new Client(`ws://${location.host}/connection/websocket`, opts);
      client.on('state', (s) => states.push(s.state));
      window.subs = [];
      const subscribed = new Promise((r) => {
        window.sub = client.subscribe(channel, {
          onPublication: (d) => got.push(d),
          onSubscribed: (s) => { subs.push(s); r(); },
        });
      });
      client.connect();
      await subscribed;
      return client.transport;
    }, [c, channel, user]);
    assert.equal(transport, c.want, c.name);
    await server.api('publish', { channel, data: { n: 1 } });
    await page.waitForFunction(() => got.length === 1);
    const r = await page.evaluate((channel) => client.publish(channel, { n: 2 }), channel);
    assert.equal(r.offset, 2);
    await page.waitForFunction(() => got.length === 2);
    // The server drops the connection; publications go on; the client recovers them.
    const clientId = await page.evaluate(() => client.clientId);
    await server.api('disconnect', { client: clientId, code: 4005, reason: 'moved', reconnect: true });
    await server.api('publish', { channel, data: { n: 3 } });
    await server.api('publish', { channel, data: { n: 4 } });
    await page.waitForFunction(() => subs.length === 2);
    const again = await page.evaluate(() => subs[1]);
    assert.equal(again.recovered, true, c.name);
    await page.waitForFunction(() => got.length === 4);
    assert.deepEqual(await page.evaluate(() => got.map((g) => g.n)), [1, 2, 3, 4]);
    assert.equal(await page.evaluate(() => client.transport), c.want);
    assert.deepEqual(errors, []);
    await page.evaluate(() => client.disconnect());
    await page.close();
    console.error(`ok ${c.name}`);
  }
  console.log('OK wsx.js falls back to sse, polling and sockjs, and recovers');
} finally {
  await browser.close();
  await server.stop();
}

// sockjs-client 1.6 (vendored at /vendor/sockjs.min.js) in Chromium against `wsx serve`'s
// /connection/sockjs (the native protocol over SockJS), on every transport a browser
// has: websocket, xhr-streaming, eventsource, iframe-eventsource, htmlfile,
// iframe-htmlfile, xhr-polling, iframe-xhr-polling, jsonp-polling. Each connects,
// subscribes, receives a publication holding `</script>` (which must survive the
// script-tag transports), publishes, and recovers what it missed after a drop.
// usage: node sockjs.mjs WSX_BIN PORT
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Server, launch, watch } from './lib.mjs';

const [wsxBin, port] = process.argv.slice(2);
const config = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wsx-sockjs-browser-')), 'ns.toml');
fs.writeFileSync(config, '[namespaces.default]\nhistory_size = 100\n');
const server = await new Server(wsxBin, port, ['--demo', 'off', '--config', config]).start();
const browser = await launch();
const transports = ['websocket', 'xhr-streaming', 'eventsource', 'iframe-eventsource', 'htmlfile',
  'iframe-htmlfile', 'xhr-polling', 'iframe-xhr-polling', 'jsonp-polling'];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  const errors = watch(page, 'sockjs');
  await page.goto(`${server.base}/console`);
  await page.addScriptTag({ url: '/vendor/sockjs.min.js' });
  await page.evaluate(() => {
    // A native-protocol client over one SockJS transport.
    window.open_ = (transport) => new Promise((resolve, reject) => {
      const sock = new SockJS('/connection/sockjs', null, { transports: [transport] });
      const c = { sock, pubs: [], waiting: new Map(), id: 0, closed: new Promise((r) => { sock.onclose = r; }) };
      sock.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.id && c.waiting.has(m.id)) { c.waiting.get(m.id)(m); c.waiting.delete(m.id); }
        else if (m.push?.pub) c.pubs.push(m.push.pub.data);
      };
      c.call = (body) => new Promise((r) => { c.id += 1; c.waiting.set(c.id, r); sock.send(JSON.stringify({ id: c.id, ...body })); });
      sock.onopen = () => resolve(c);
      sock.onerror = reject;
      setTimeout(() => reject(new Error(`no open over ${transport}`)), 15000);
    });
  });
  for (const t of transports) {
    const channel = `web-${t}`;
    const first = await page.evaluate(async ([t, channel]) => {
      window.c = await open_(t);
      await c.call({ connect: {} });
      const sub = await c.call({ subscribe: { channel } });
      return { transport: c.sock.transport, epoch: sub.subscribe.epoch };
    }, [t, channel]);
    assert.equal(first.transport, t);
    const tricky = { text: 'a</script><script>alert(1)</script>\u2028\u0000b' };
    await server.api('publish', { channel, data: tricky });
    await page.waitForFunction(() => c.pubs.length === 1);
    assert.deepEqual(await page.evaluate(() => c.pubs[0]), tricky);
    const own = await page.evaluate(async (channel) => (await c.call({ publish: { channel, data: 'mine' } })).publish, channel);
    assert.equal(own.offset, 2);
    await page.waitForFunction(() => c.pubs.length === 2);
    // Drop, miss two, come back on the same transport and recover them.
    await page.evaluate(async () => { c.sock.close(); await c.closed; });
    await server.api('publish', { channel, data: 3 });
    await server.api('publish', { channel, data: 4 });
    const rec = await page.evaluate(async ([t, channel, epoch]) => {
      window.c = await open_(t);
      await c.call({ connect: {} });
      return (await c.call({ subscribe: { channel, recover: true, offset: 2, epoch } })).subscribe;
    }, [t, channel, first.epoch]);
    assert.equal(rec.recovered, true, t);
    await page.waitForFunction(() => c.pubs.length === 2);
    assert.deepEqual(await page.evaluate(() => c.pubs), [3, 4]);
    await page.evaluate(() => c.sock.close());
    console.error(`ok ${t}`);
  }
  // sockjs-client's jsonp-polling deletes its global callback when the socket closes
  // while a poll's script may still run ("_jp.xxx is not a function"): a client-side
  // race on close, not a lost message (every message above was asserted).
  assert.deepEqual(errors.filter((e) => !/_jp\.\w+ is not a function/.test(e)), []);
  console.log('OK sockjs-client in chromium on every transport');
} finally {
  await browser.close();
  await server.stop();
}

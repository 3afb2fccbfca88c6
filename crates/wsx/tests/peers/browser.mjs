// Chromium's native WebSocket against wsx servers, driven by playwright-core.
// usage: node browser.mjs PAGE_URL WS_URL WS_NCT_URL WSS_URL SPKI_SHA256 SCREENSHOT
// Every case runs in the page; failures exit non-zero with the case's name.
import { chromium } from 'playwright-core';

const [pageUrl, wsUrl, nctUrl, wssUrl, spki, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run',
    // Trust exactly the test server's key for wss://, nothing else.
    `--ignore-certificate-errors-spki-list=${spki}`,
  ],
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error('page:', m.text()));
  await page.goto(pageUrl);
  const results = await page.evaluate(async ({ wsUrl, nctUrl, wssUrl }) => {
    const log = [];
    const fail = (what) => { throw new Error(what); };
    function open(url, protocols) {
      const ws = new WebSocket(url, protocols);
      ws.binaryType = 'arraybuffer';
      const queue = [];
      const waiters = [];
      ws.onmessage = (e) => (waiters.length ? waiters.shift()(e.data) : queue.push(e.data));
      ws.next = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
      ws.closed = new Promise((r) => { ws.onclose = (e) => r({ code: e.code, reason: e.reason, wasClean: e.wasClean }); });
      return new Promise((resolve, reject) => { ws.onopen = () => resolve(ws); ws.onerror = () => reject(new Error(`cannot open ${url}`)); });
    }
    const eqBytes = (a, b) => a.byteLength === b.byteLength && new Uint8Array(a).every((x, i) => x === b[i]);

    const ws = await open(wsUrl, ['superchat', 'chat']);
    if (ws.protocol !== 'chat') fail(`subprotocol ${ws.protocol}`);
    if (!ws.extensions.startsWith('permessage-deflate')) fail(`extensions ${ws.extensions}`);
    log.push(`extensions: ${ws.extensions}`);
    for (const size of [0, 125, 126, 65535, 65536, 16 << 20]) {
      const text = 'abcdefghijklmnopqrstuvwxyz'.repeat(Math.ceil(size / 26)).slice(0, size);
      ws.send(text);
      if ((await ws.next()) !== text) fail(`text ${size}`);
      const bin = new Uint8Array(size);
      for (let i = 0; i < size; i++) bin[i] = i % 251;
      ws.send(bin);
      if (!eqBytes(await ws.next(), bin)) fail(`binary ${size}`);
    }
    ws.send('fragmented');
    if ((await ws.next()) !== 'fragmented κόσμε') fail('fragmented from the server');
    ws.send('ping from-wsx');
    ws.send('close 4001 bye from server');
    const c1 = await ws.closed;
    if (c1.code !== 4001 || c1.reason !== 'bye from server' || !c1.wasClean) fail(`server close ${JSON.stringify(c1)}`);

    const ws2 = await open(wsUrl);
    ws2.close(4002, 'bye from client');
    const c2 = await ws2.closed;
    if (c2.code !== 4002 || !c2.wasClean) fail(`client close ${JSON.stringify(c2)}`);

    const nct = await open(nctUrl);
    if (!nct.extensions.includes('client_no_context_takeover')) fail(`nct extensions ${nct.extensions}`);
    log.push(`nct extensions: ${nct.extensions}`);
    for (let i = 0; i < 5; i++) {
      const text = `{"i":${i},"pad":"${'x'.repeat(5000)}"}`;
      nct.send(text);
      if ((await nct.next()) !== text) fail(`nct echo ${i}`);
    }
    nct.close(1000);
    await nct.closed;

    const tls = await open(wssUrl, ['chat']);
    tls.send('over TLS');
    if ((await tls.next()) !== 'over TLS') fail('wss echo');
    tls.close(1000, 'done');
    const c3 = await tls.closed;
    if (c3.code !== 1000) fail(`wss close ${JSON.stringify(c3)}`);
    document.body.textContent = `all cases passed\n${log.join('\n')}`;
    return log;
  }, { wsUrl, nctUrl, wssUrl });
  await page.screenshot({ path: screenshot });
  console.log('OK', JSON.stringify(results));
} finally {
  await browser.close();
}

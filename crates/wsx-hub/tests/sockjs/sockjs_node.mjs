// sockjs-client 1.6 (the registry's package) in Node on each transport it has there
// (websocket, xhr-streaming, xhr-polling, eventsource): echo (with characters the
// protocol escapes and a `</script>`), a server close, and the native protocol over
// SockJS with recovery after the transport drops.
// usage: node sockjs_node.mjs http://127.0.0.1:PORT API_KEY
import assert from 'node:assert/strict';
import SockJS from 'sockjs-client';

const [base, key] = process.argv.slice(2);
const bound = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms));
const within = (p, what, ms = 10000) => Promise.race([p, bound(ms, what)]);
const results = [];
const ok = (name) => { results.push(name); console.log(`ok ${name}`); };

function open(url, transport) {
  const sock = new SockJS(url, null, { transports: [transport] });
  const inbox = [];
  const waiting = [];
  sock.onmessage = (e) => { const w = waiting.shift(); if (w) w(e.data); else inbox.push(e.data); };
  sock.next = (what) => within(new Promise((r) => { if (inbox.length) r(inbox.shift()); else waiting.push(r); }), what);
  sock.closed = new Promise((r) => { sock.onclose = r; });
  return within(new Promise((resolve, reject) => {
    sock.onopen = () => resolve(sock);
    sock.onerror = reject;
  }), `open ${url} over ${transport}`);
}

async function api(method, body) {
  const r = await fetch(`${base}/api/${method}`, { method: 'POST', headers: { Authorization: `apikey ${key}` }, body: JSON.stringify(body) });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text).result;
}

let id = 0;
async function call(sock, body) {
  id += 1;
  sock.send(JSON.stringify({ id, ...body }));
  for (;;) {
    const m = JSON.parse(await sock.next(`reply ${id}`));
    if (m.id === id) {
      if (m.error) throw new Error(JSON.stringify(m.error));
      return m[Object.keys(body)[0]];
    }
  }
}

async function pub(sock) {
  for (;;) {
    const m = JSON.parse(await sock.next('push'));
    if (m.push?.pub) return m.push.pub;
  }
}

for (const transport of ['websocket', 'xhr-streaming', 'xhr-polling', 'eventsource']) {
  // Echo, with what the protocol escapes and what would end a script element.
  const echo = await open(`${base}/echo`, transport);
  assert.equal(echo.transport, transport);
  for (const m of ['hello', 'ünïcödé \u2028 \u0000', '</script><b>', 'x'.repeat(5000)]) {
    echo.send(m);
    assert.equal(await echo.next(`echo over ${transport}`), m);
  }
  echo.close();

  // The server closes: the client hears its code and reason.
  const closing = await open(`${base}/close`, transport);
  const e = await within(closing.closed, 'close');
  assert.deepEqual([e.code, e.reason], [3000, 'Go away!']);

  // The native protocol, and recovery after the transport drops.
  const channel = `news-${transport}`;
  const a = await open(`${base}/connection/sockjs`, transport);
  await call(a, { connect: {} });
  const sub = await call(a, { subscribe: { channel } });
  await api('publish', { channel, data: { n: 1 } });
  assert.deepEqual((await pub(a)).data, { n: 1 });
  a.close();
  await within(a.closed, 'closed');
  await api('publish', { channel, data: { n: 2 } });
  await api('publish', { channel, data: { n: 3 } });
  const b = await open(`${base}/connection/sockjs`, transport);
  await call(b, { connect: {} });
  const rec = await call(b, { subscribe: { channel, recover: true, offset: 1, epoch: sub.epoch } });
  assert.equal(rec.recovered, true);
  assert.deepEqual([(await pub(b)).data, (await pub(b)).data], [{ n: 2 }, { n: 3 }]);
  b.close();
  ok(`sockjs-client over ${transport}`);
}
console.log(`OK passed ${results.length}`);
process.exit(0);

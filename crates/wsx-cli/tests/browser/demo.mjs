// The demo pages in Chromium against a real `wsx serve`: the live grading page with the
// real judge (correct, wrong, infinite loop, resubmission), two chat windows talking,
// and the live chart recovering after a disconnect and after a server restart.
// usage: node demo.mjs WSX_BIN PORT SCREENSHOT_DIR [grading|chat|chart ...]
import assert from 'node:assert/strict';
import path from 'node:path';
import { Server, freePort, launch, watch } from './lib.mjs';

const [wsxBin, port, shots, ...only] = process.argv.slice(2);
const wanted = (name) => only.length === 0 || only.includes(name);
const server = await new Server(wsxBin, port).start();
const base = server.base;
const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
const browser = await launch();
const errors = [];

async function openPage(url, name, context = browser) {
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  await page.setViewportSize({ width: 1280, height: 860 });
  errors.push(watch(page, name));
  await page.goto(url);
  return page;
}

// Record every verdict as it lands: which case, which verdict, and how many rows were
// still spinning at that moment.
async function recordVerdicts(page) {
  await page.evaluate(() => {
    window.landed = [];
    window.observer?.disconnect();
    window.observer = new MutationObserver((changes) => {
      for (const c of changes) {
        const v = c.target.dataset.verdict;
        if (!v) continue;
        window.landed.push({ case: Number(c.target.dataset.case), verdict: v, spinning: document.querySelectorAll('#cases .spinner').length });
      }
    });
    window.observer.observe(document.querySelector('#cases tbody'), { subtree: true, attributes: true, attributeFilter: ['data-verdict'] });
  });
}

async function submitAndWait(page) {
  await recordVerdicts(page);
  await page.click('button:text-is("Submit")');
  await page.waitForFunction(() => document.querySelectorAll('#cases tr[data-case]:not([data-verdict])').length === 0 && !document.querySelector('#summary').hidden, null, { timeout: 60000 });
  return page.evaluate(() => ({
    landed: window.landed,
    rows: [...document.querySelectorAll('#cases tr[data-case]')].map((r) => ({ case: Number(r.dataset.case), verdict: r.dataset.verdict, mark: r.querySelector('.mark').textContent, time: r.querySelector('.time').textContent })),
    summary: document.querySelector('#summary').textContent,
  }));
}

async function grading() {
  const index = await openPage(`${base}/`, 'index');
  for (const href of ['/grading', '/chat', '/chart']) assert.equal(await index.locator(`main a[href="${href}"]`).count(), 1, href);
  await shot(index, 'index');

  const page = await openPage(`${base}/grading`, 'grading');
  await page.waitForFunction(() => !document.querySelector('#submit').disabled);
  const cases = await page.locator('#cases tr[data-case]').count();
  assert.ok(cases >= 10 && cases <= 20, `${cases} cases`);

  // The sample solution: every row passes; rows update while others still spin, and the
  // order in which verdicts land is whatever order the cases finished in.
  let r = await submitAndWait(page);
  assert.ok(r.rows.every((x) => x.verdict === 'AC' && x.mark === 'O'), JSON.stringify(r.rows));
  assert.equal(r.landed.length, cases, JSON.stringify(r.landed));
  assert.ok(r.landed[0].spinning > 0, `the first verdict landed while other rows were running: ${JSON.stringify(r.landed)}`);
  const order = r.landed.map((x) => x.case);
  assert.notDeepEqual(order, [...order].sort((a, b) => a - b), `verdicts landed out of order: ${order}`);
  assert.match(r.summary, /Accepted/);
  console.error('grading: sample landed in order', order.join(','));
  await shot(page, 'grading-accepted');

  // A wrong solution: failing rows turn to X with WA.
  await page.click('button[data-example="wrong"]');
  r = await submitAndWait(page);
  const wa = r.rows.filter((x) => x.verdict === 'WA');
  assert.ok(wa.length > 0 && wa.every((x) => x.mark === 'X'), JSON.stringify(r.rows));
  assert.match(r.summary, /First failure: test \d+, WA/);

  // An infinite loop: TLE, within the limit (2 s) plus the time to kill it.
  await page.fill('#code', 'while True:\n    pass\n');
  r = await submitAndWait(page);
  assert.ok(r.rows.every((x) => x.verdict === 'TLE' && x.mark === 'X'), JSON.stringify(r.rows));
  for (const x of r.rows) {
    const ms = Number(x.time.replace(' ms', ''));
    assert.ok(ms >= 1900 && ms < 3500, `TLE after ${ms} ms`);
  }

  // Resubmitting cancels the previous run: no verdict of the loop shows up.
  await page.fill('#code', 'while True:\n    pass\n');
  await recordVerdicts(page);
  await page.click('button:text-is("Submit")');
  await page.waitForFunction(() => document.querySelectorAll('#cases .spinner').length > 0);
  await page.click('button[data-example="sample"]');
  r = await submitAndWait(page);
  assert.ok(r.rows.every((x) => x.verdict === 'AC'), JSON.stringify(r.rows));
  assert.ok(r.landed.every((x) => x.verdict === 'AC'), `a cancelled run's verdict showed: ${JSON.stringify(r.landed)}`);

  // The too-slow example: a mix of passes and time limits, the picture for the README.
  await page.click('button[data-example="slow"]');
  r = await submitAndWait(page);
  assert.ok(r.rows.some((x) => x.verdict === 'AC') && r.rows.some((x) => x.verdict === 'TLE'), JSON.stringify(r.rows));
  await shot(page, 'grading');

  // A server without python3: the page says so and Submit stays off.
  const bare = await new Server(wsxBin, await freePort(), ['--demo-judge-python', '/nonexistent/python3']).start();
  try {
    const p = await openPage(`${bare.base}/grading`, 'grading-no-python');
    await p.waitForSelector('#unavailable:not([hidden])');
    assert.match(await p.textContent('#unavailable'), /python3.*was not found/);
    assert.ok(await p.isDisabled('#submit'));
  } finally {
    await bare.stop();
  }
}

async function chat() {
  const room = `test-${Date.now()}`;
  const ctxA = await browser.newContext();
  const ctxB = await browser.newContext();
  const a = await openPage(`${base}/chat?room=${room}&nick=alice`, 'alice', ctxA);
  const b = await openPage(`${base}/chat?room=${room}&nick=bob`, 'bob', ctxB);
  const members = (p) => p.$$eval('#members li .nick', (els) => els.map((el) => el.textContent).sort());
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.querySelectorAll('#members li').length === 2);
    assert.deepEqual(await members(p), ['alice', 'bob']);
  }
  // Typing shows live on the other side.
  await a.type('#text', 'hel');
  await b.waitForFunction(() => document.querySelector('#typing').textContent.includes('alice is typing'));
  await a.fill('#text', 'hello from alice');
  await a.press('#text', 'Enter');
  await b.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes('hello from alice')));
  await b.fill('#text', 'hi alice, bob here');
  await b.click('#send');
  await a.waitForFunction(() => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes('bob here')));
  await shot(a, 'chat');
  // Bob leaves: Alice's member list drops him.
  await ctxB.close();
  await a.waitForFunction(() => document.querySelectorAll('#members li').length === 1);
  assert.deepEqual(await members(a), ['alice']);
  // A newcomer gets the conversation from history.
  const ctxC = await browser.newContext();
  const c = await openPage(`${base}/chat?room=${room}&nick=carol`, 'carol', ctxC);
  await c.waitForFunction(() => document.querySelectorAll('#messages li').length === 2);
  const texts = await c.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
  assert.ok(texts[0].includes('hello from alice') && texts[1].includes('bob here'), JSON.stringify(texts));
  await a.waitForFunction(() => document.querySelectorAll('#members li').length === 2);
  await ctxA.close();
  await ctxC.close();
}

async function chart() {
  const page = await openPage(`${base}/chart`, 'chart');
  const contiguous = () => page.evaluate(() => {
    const p = window.chart.points;
    const gaps = p.slice(1).filter((x, i) => x.seq !== p[i].seq + 1).map((x) => x.seq);
    return { n: p.length, first: p[0]?.seq, last: p.at(-1)?.seq, gaps };
  });
  await page.waitForFunction(() => window.chart.points.length >= 40);
  let c = await contiguous();
  assert.deepEqual(c.gaps, [], JSON.stringify(c));

  // The server drops the connection (reconnect advised); ticks go on meanwhile and come
  // back by recovery: no gap.
  const client = await page.evaluate(() => window.chart.client.clientId);
  const lastBefore = c.last;
  await server.api('disconnect', { client, code: 3002, reason: 'test', reconnect: true });
  await page.waitForFunction(() => window.chart.client.state === 'reconnecting');
  await page.waitForFunction(() => window.chart.stats.recovered >= 1);
  await page.waitForFunction((n) => window.chart.points.at(-1).seq > n + 20, lastBefore);
  c = await contiguous();
  assert.deepEqual(c.gaps, [], `recovered across the disconnect: ${JSON.stringify(c)}`);
  assert.ok(c.first <= lastBefore, JSON.stringify(c));

  // The server restarts: history starts again (new epoch) and the chart refills from it.
  const epoch = await page.evaluate(() => window.chart.epoch);
  await server.stop();
  await page.waitForFunction(() => window.chart.client.state !== 'connected');
  await server.start();
  await page.waitForFunction((e) => window.chart.epoch !== e && window.chart.client.state === 'connected', epoch);
  await page.waitForFunction(() => window.chart.points.length >= 30);
  c = await contiguous();
  assert.equal(c.first, 0, `refilled from the new server's first tick: ${JSON.stringify(c)}`);
  assert.deepEqual(c.gaps, [], JSON.stringify(c));
  await shot(page, 'chart');
}

try {
  if (wanted('grading')) await grading();
  if (wanted('chat')) await chat();
  if (wanted('chart')) await chart();
  const thrown = errors.flat();
  assert.deepEqual(thrown, [], 'errors on the pages');
  console.log('OK');
} finally {
  await browser.close();
  await server.stop().catch(() => {});
}

// The live grading page: submit over HTTP, verdicts pushed over the WebSocket, one row
// per test case, each updated the moment its own verdict arrives.
import { newClient, showState, h } from '/demo.js';

const $ = (id) => document.getElementById(id);
const EXAMPLES = {
  wrong: 'import sys\n\ndata = sys.stdin.read().split()\nn, q = int(data[0]), int(data[1])\na = list(map(int, data[2:2 + n]))\nout = []\nfor i in range(q):\n    l, r = int(data[2 + n + 2 * i]), int(data[3 + n + 2 * i])\n    out.append(sum(a[l:r]))  # off by one\nprint("\\n".join(map(str, out)))\n',
  slow: 'import sys\n\ndata = sys.stdin.read().split()\nn, q = int(data[0]), int(data[1])\na = list(map(int, data[2:2 + n]))\nfor i in range(q):\n    l, r = int(data[2 + n + 2 * i]), int(data[3 + n + 2 * i])\n    print(sum(a[l - 1:r]))  # O(n) per query\n',
  crash: 'import sys\n\nn, q = map(int, sys.stdin.readline().split())\nprint(1 // (n - n))\n',
};

const session = sessionStorage.getItem('wsx-judge-session') || crypto.randomUUID().replaceAll('-', '');
sessionStorage.setItem('wsx-judge-session', session);

let problem = null;
let current = null; // the submission number shown
let pending = false; // a submit is on its way
let early = []; // messages that arrived before the submit's reply
let results = new Map();
let subscribed = false;

const client = newClient({ info: 'grading' });
showState(client, $('state'));
window.judge = { client, session };

function rows() { return [...document.querySelectorAll('#cases tbody tr')]; }

function renderCases() {
  const body = document.querySelector('#cases tbody');
  body.replaceChildren(...problem.cases.map((c) => h('tr', { dataset: { case: c.case } },
    h('td', {}, String(c.case)),
    h('td', { class: 'muted' }, c.label),
    h('td', { class: 'mark' }),
    h('td', { class: 'verdict' }, '—'),
    h('td', { class: 'time' }, ''))));
}

function updateSubmit() {
  $('submit').disabled = !(problem && !problem.unavailable && subscribed);
}

function onMessage(m) {
  if (pending && current === null) { early.push(m); return; }
  if (m.submission !== current) return;
  if (m.case !== undefined) {
    results.set(m.case, m);
    const row = document.querySelector(`#cases tr[data-case="${m.case}"]`);
    const pass = m.verdict === 'AC';
    row.dataset.verdict = m.verdict;
    row.className = pass ? 'pass' : 'fail';
    row.querySelector('.mark').replaceChildren(h('span', { class: `mark-${pass ? 'o' : 'x'}`, title: pass ? 'passed' : 'failed' }, pass ? 'O' : 'X'));
    row.querySelector('.verdict').replaceChildren(...[h('b', {}, m.verdict), m.detail ? h('small', { class: 'muted' }, ` ${m.detail}`) : null].filter(Boolean));
    row.querySelector('.time').textContent = `${m.time_ms} ms`;
    if (results.size === problem.cases.length) summarize();
  } else if (m.error) {
    showSummary(`The judge could not run this submission: ${m.error}`, 'fail');
  }
}

function summarize() {
  const all = [...results.values()];
  const passed = all.filter((r) => r.verdict === 'AC').length;
  const total = problem.cases.length;
  const slowest = Math.max(...all.map((r) => r.time_ms));
  if (passed === total) {
    showSummary(`Accepted: all ${total} tests passed (slowest ${slowest} ms).`, 'pass');
  } else {
    const first = all.filter((r) => r.verdict !== 'AC').sort((a, b) => a.case - b.case)[0];
    showSummary(`${passed} / ${total} tests passed. First failure: test ${first.case}, ${first.verdict}.`, 'fail');
  }
}

function showSummary(text, kind) {
  const el = $('summary');
  el.hidden = false;
  el.className = `summary ${kind}`;
  el.dataset.result = kind;
  el.textContent = text;
}

async function submit(e) {
  e.preventDefault();
  current = null;
  pending = true;
  early = [];
  results = new Map();
  $('summary').hidden = true;
  for (const row of rows()) {
    delete row.dataset.verdict;
    row.className = 'running';
    row.querySelector('.mark').replaceChildren(h('span', { class: 'spinner', role: 'status', 'aria-label': 'running' }));
    row.querySelector('.verdict').textContent = 'running';
    row.querySelector('.time').textContent = '';
  }
  try {
    const r = await fetch('/demo/judge/submit', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session, code: $('code').value }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    current = body.submission;
    $('submission').textContent = `· submission ${current}`;
  } catch (err) {
    showSummary(`Not submitted: ${err.message}`, 'fail');
    for (const row of rows()) { row.className = ''; row.querySelector('.mark').replaceChildren(); row.querySelector('.verdict').textContent = '—'; }
  } finally {
    pending = false;
    const replay = early;
    early = [];
    replay.forEach(onMessage);
  }
}

async function main() {
  const r = await fetch('/demo/judge/problem');
  if (!r.ok) {
    problem = { cases: [], unavailable: 'The demo is off on this server (wsx serve --demo off).' };
  } else {
    problem = await r.json();
  }
  $('title').textContent = problem.title || 'Problem';
  $('statement').replaceChildren(...(problem.statement || '').split('\n\n').map((p) => h('p', {}, p)));
  if (problem.time_limit_ms) $('limits').textContent = `Time limit ${problem.time_limit_ms} ms per test · memory ${problem.memory_limit_mb} MiB · Python ${problem.python || '(missing)'}`;
  if (problem.unavailable) {
    $('unavailable').hidden = false;
    $('unavailable').textContent = `The judge cannot run here: ${problem.unavailable}`;
  }
  EXAMPLES.sample = problem.sample_solution || '';
  $('code').value = EXAMPLES.sample;
  renderCases();
  updateSubmit();
}

document.querySelectorAll('[data-example]').forEach((b) => b.addEventListener('click', () => { $('code').value = EXAMPLES[b.dataset.example]; }));
$('code').addEventListener('keydown', (e) => {
  if (e.key !== 'Tab') return;
  e.preventDefault();
  const t = e.target;
  const at = t.selectionStart;
  t.value = `${t.value.slice(0, at)}    ${t.value.slice(t.selectionEnd)}`;
  t.selectionStart = t.selectionEnd = at + 4;
});
$('submit-form').addEventListener('submit', submit);

client.subscribe(`judge:${session}`, {
  onPublication: (data) => onMessage(data),
  onSubscribed: () => { subscribed = true; updateSubmit(); },
});
client.on('state', (s) => { if (s.state !== 'connected') { subscribed = false; updateSubmit(); } });
client.connect();
main();

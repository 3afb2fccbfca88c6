// Shared by the browser tests: run `wsx serve`, call its HTTP API, launch Chromium.
import { spawn } from 'node:child_process';
import net from 'node:net';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const API_KEY = 'browser-test-key-0123456789';

export class Server {
  constructor(bin, port, args = []) {
    this.bin = bin;
    this.port = port;
    this.args = args;
    this.base = `http://127.0.0.1:${port}`;
    this.child = null;
  }

  async start() {
    this.child = spawn(this.bin, ['serve', '--listen', `127.0.0.1:${this.port}`, '--api-key', API_KEY, ...this.args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr.on('data', (d) => { if (process.env.WSX_TEST_VERBOSE) process.stderr.write(d); });
    for (let i = 0; i < 200; i++) {
      try {
        const r = await fetch(`${this.base}/healthz`);
        if (r.ok) return this;
      } catch {}
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('wsx serve did not start');
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGINT');
    await exited;
  }

  async api(method, body) {
    const r = await fetch(`${this.base}/api/${method}`, {
      method: 'POST',
      headers: { Authorization: `apikey ${API_KEY}` },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    assert.equal(r.status, 200, `${method}: ${text}`);
    return JSON.parse(text).result;
  }
}

export function launch() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
}

// Page errors fail the test; console output goes to stderr for the failure report.
export function watch(page, name) {
  const errors = [];
  page.on('console', (m) => console.error(`${name}:`, m.text()));
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  return errors;
}

// A port nobody listens on now.
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Shared by the demo pages: a hub client for this server and a connection-state badge.
import { Client } from '/wsx.js';

export function hubUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/connection/websocket`;
}

export function newClient(options = {}) {
  return new Client(hubUrl(), { name: 'wsx demo', ...options });
}

// Keep `el` showing the client's state: connecting, connected, reconnecting in N s.
export function showState(client, el) {
  let timer = null;
  client.on('state', (s) => {
    clearInterval(timer);
    el.dataset.state = s.state;
    el.className = `state ${s.state}`;
    if (s.state === 'reconnecting' && s.delay) {
      const until = Date.now() + s.delay;
      const tick = () => {
        el.textContent = `reconnecting in ${Math.max(0, Math.ceil((until - Date.now()) / 1000))} s`;
      };
      tick();
      timer = setInterval(tick, 250);
    } else {
      el.textContent = s.state === 'reconnecting' ? 'reconnecting…' : s.state;
    }
  });
}

// document.createElement with attributes and children (strings become text nodes).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

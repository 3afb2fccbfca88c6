// The echo console: connect, send, see what arrives (native WebSocket, no library).
const $ = (id) => document.getElementById(id);
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
$('url').value = `${scheme}://${location.host}/echo`;
let ws = null;

function log(kind, text) {
  const li = document.createElement('li');
  li.className = kind;
  li.dataset.kind = kind;
  const time = new Date().toLocaleTimeString();
  li.innerHTML = `<time>${time}</time><b>${kind}</b>`;
  li.append(document.createTextNode(text));
  $('log').prepend(li);
}

function setState(state) {
  const el = $('state');
  el.textContent = state;
  el.className = `state ${state}`;
  el.dataset.state = state;
  $('send-btn').disabled = state !== 'open';
  $('connect-btn').textContent = state === 'open' || state === 'connecting' ? 'Disconnect' : 'Connect';
}

$('connect').addEventListener('submit', (e) => {
  e.preventDefault();
  if (ws && ws.readyState <= WebSocket.OPEN) {
    ws.close(1000, 'bye');
    return;
  }
  setState('connecting');
  ws = new WebSocket($('url').value);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { setState('open'); log('open', ws.extensions ? ` (${ws.extensions})` : ''); };
  ws.onmessage = (ev) => log('received', typeof ev.data === 'string' ? ev.data : `[${ev.data.byteLength} bytes]`);
  ws.onclose = (ev) => { setState('closed'); log('closed', ` code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''}`); };
  ws.onerror = () => log('error', '');
});

$('send').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('message').value;
  if (!ws || ws.readyState !== WebSocket.OPEN || text === '') return;
  ws.send(text);
  log('sent', text);
  $('message').value = '';
});

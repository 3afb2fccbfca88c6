// Chat: a room is the channel chat:<room> (presence, join/leave, history of 50) plus
// typing:<room> for typing notices (kept nowhere).
import { newClient, showState, memberVia, h } from '/demo.js';

const $ = (id) => document.getElementById(id);
const ROOMS = ['lobby', 'rust', 'random'];
const params = new URLSearchParams(location.search);
let nick = params.get('nick') || localStorage.getItem('wsx-nick') || `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
let room = params.get('room') || 'lobby';
let chatSub = null;
let typingSub = null;
let seen = new Set(); // offsets shown (history and live may overlap)
let members = new Map(); // client id -> member (client, info, protocol, transport)
const typing = new Map(); // nick -> expiry
let lastTypingSent = 0;

const client = newClient({ info: nick });
showState(client, $('state'));
window.chat = { client, get room() { return room; }, get nick() { return nick; } };

function time(ts) { return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); }

function addMessage(offset, m) {
  if (seen.has(offset)) return;
  seen.add(offset);
  const mine = m.client === client.clientId;
  const li = h('li', { class: mine ? 'mine' : '', dataset: { offset, nick: m.nick } },
    h('time', {}, time(m.ts)), h('b', {}, m.nick), h('span', {}, m.text));
  // Keep order by offset: recovered and history messages may come after newer ones.
  const list = $('messages');
  const after = [...list.children].find((el) => Number(el.dataset.offset) > offset);
  list.insertBefore(li, after || null);
  list.scrollTop = list.scrollHeight;
  typing.delete(m.nick);
  renderTyping();
}

function renderMembers() {
  const byNick = [...members.values()].sort((a, b) => (a.info || '').localeCompare(b.info || ''));
  $('members').replaceChildren(...byNick.map((m) => h('li', { dataset: { client: m.client, via: memberVia(m) } },
    h('span', { class: 'dot' }), h('span', { class: 'nick' }, m.info || 'anonymous'),
    h('span', { class: 'via', title: 'how this member is connected' }, memberVia(m)),
    m.client === client.clientId ? h('small', { class: 'muted' }, ' (you)') : null)));
  $('member-count').textContent = `· ${members.size}`;
}

function renderTyping() {
  const now = Date.now();
  for (const [who, until] of typing) if (until < now) typing.delete(who);
  const who = [...typing.keys()];
  $('typing').textContent = who.length === 0 ? '' : `${who.join(', ')} ${who.length === 1 ? 'is' : 'are'} typing…`;
}
setInterval(renderTyping, 500);

function renderRooms() {
  const all = ROOMS.includes(room) ? ROOMS : [...ROOMS, room];
  $('rooms').replaceChildren(...all.map((r) => h('li', {},
    h('a', { href: `?room=${encodeURIComponent(r)}`, class: r === room ? 'active' : '', dataset: { room: r } }, `#${r}`))));
}

async function loadRoom() {
  try {
    const [hist, pres] = await Promise.all([
      chatSub.history({ limit: 50, reverse: true }),
      chatSub.presence(),
    ]);
    for (const p of hist.publications.reverse()) addMessage(p.offset, p.data);
    members = new Map(Object.values(pres).map((m) => [m.client, m]));
    renderMembers();
  } catch (e) {
    console.error('loading the room failed', e);
  }
}

function enter(name) {
  if (chatSub) chatSub.unsubscribe();
  if (typingSub) typingSub.unsubscribe();
  room = name;
  seen = new Set();
  members = new Map();
  typing.clear();
  $('messages').replaceChildren();
  $('room-title').textContent = `#${room}`;
  renderRooms();
  renderMembers();
  chatSub = client.subscribe(`chat:${room}`, {
    onPublication: (data, p) => addMessage(p.offset, data),
    onSubscribed: () => { $('send').disabled = false; loadRoom(); },
    onJoin: (m) => { members.set(m.client, m); renderMembers(); },
    onLeave: (m) => { members.delete(m.client); renderMembers(); },
    onError: (e) => console.error('subscribe failed', e),
  });
  typingSub = client.subscribe(`typing:${room}`, {
    onPublication: (data) => {
      if (data.client === client.clientId) return;
      typing.set(data.nick, Date.now() + 3000);
      renderTyping();
    },
  });
}

$('rooms').addEventListener('click', (e) => {
  const a = e.target.closest('a[data-room]');
  if (!a) return;
  e.preventDefault();
  history.replaceState(null, '', `?room=${encodeURIComponent(a.dataset.room)}`);
  enter(a.dataset.room);
});
$('room-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('room-name').value.trim().toLowerCase().replace(/[^a-z0-9_-]/g, '-');
  if (!name) return;
  $('room-name').value = '';
  history.replaceState(null, '', `?room=${encodeURIComponent(name)}`);
  enter(name);
});
$('nick').value = nick;
$('nick-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const next = $('nick').value.trim();
  if (!next || next === nick) return;
  nick = next;
  localStorage.setItem('wsx-nick', nick);
  // Presence shows the info given at connect: reconnect under the new name.
  client.options.info = nick;
  client.disconnect();
  client.connect();
});
$('send-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  try {
    await chatSub.publish({ nick, text, ts: Date.now(), client: client.clientId });
    $('text').value = '';
    lastTypingSent = 0;
  } catch (err) {
    console.error('send failed', err);
  }
});
$('text').addEventListener('input', () => {
  const now = Date.now();
  if (now - lastTypingSent < 2000 || client.state !== 'connected') return;
  lastTypingSent = now;
  typingSub.publish({ nick, client: client.clientId }).catch(() => {});
});
client.on('state', (s) => {
  $('send').disabled = s.state !== 'connected';
  if (s.state !== 'connected') { members = new Map(); renderMembers(); }
});

renderRooms();
enter(room);
client.connect();

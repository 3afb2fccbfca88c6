// The Node.js socket.io server (npm socket.io 4.8, the version the official suites
// pass) doing what `wsx serve` does for the fan-out benchmark: a client emits
// `subscribe(channel, ack)` to join the room; `POST /api/publish {channel, data}`
// broadcasts `publication(channel, data, {offset})` to the room.
// usage: node socketio_server.mjs PORT API_KEY   (prints "open http://..." on stderr)
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const [port, key] = process.argv.slice(2);
let offset = 0;
const http = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/publish') {
    if (req.headers.authorization !== `apikey ${key}`) {
      res.writeHead(401).end();
      return;
    }
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const { channel, data } = JSON.parse(body);
      offset += 1;
      io.to(channel).emit('publication', channel, data, { offset });
      const out = JSON.stringify({ result: { offset } });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    });
    return;
  }
  if (!req.url.startsWith('/socket.io/')) res.writeHead(404).end();
});
const io = new Server(http, { serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (channel, ack) => {
    socket.join(channel);
    if (typeof ack === 'function') ack({ result: {} });
  });
});
http.listen(Number(port), '127.0.0.1', () => console.error(`open http://127.0.0.1:${port}/`));

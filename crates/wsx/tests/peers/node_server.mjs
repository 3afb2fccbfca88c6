// Node `ws` echo server for the wsx interop tests.
// usage: node node_server.mjs MODE [CERT KEY]   (MODE: plain | deflate | deflate-nct)
// Prints `listening PORT`, then `accepted SUBPROTOCOL EXTENSIONS` and `closed CODE REASON`
// per connection. Text `close CODE REASON` makes it close with that code.
import { createServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { WebSocketServer } from 'ws';

const [mode, cert, key] = process.argv.slice(2);
const perMessageDeflate = mode === 'plain' ? false : {
  threshold: 0,
  serverNoContextTakeover: mode === 'deflate-nct',
  clientNoContextTakeover: mode === 'deflate-nct',
};
const options = {
  perMessageDeflate,
  maxPayload: 64 << 20,
  handleProtocols: (protocols) => (protocols.has('superchat') ? 'superchat' : false),
};
let wss;
if (cert) {
  const server = createServer({ cert: readFileSync(cert), key: readFileSync(key) });
  wss = new WebSocketServer({ server, ...options });
  server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
} else {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options });
  wss.on('listening', () => console.log(`listening ${wss.address().port}`));
}
wss.on('connection', (ws) => {
  const pmd = ws._extensions['permessage-deflate'];
  console.log(`accepted ${ws.protocol} ${JSON.stringify(pmd ? { 'permessage-deflate': pmd.params } : {})}`);
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    if (text !== null && text.startsWith('close ')) {
      const rest = text.slice(6);
      const i = rest.indexOf(' ');
      ws.close(Number(i < 0 ? rest : rest.slice(0, i)), i < 0 ? '' : rest.slice(i + 1));
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => console.log(`closed ${code} ${reason.toString()}`));
});

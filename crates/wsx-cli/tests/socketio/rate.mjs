// socket.io-client against `wsx serve --commands-per-second 5 --command-burst 5`: the
// first five events are answered, the next ones fast after them get the rate error in
// their ack (code 114), and far over the rate the client is disconnected by the server.
//   node rate.mjs HOST:PORT
import { io } from 'socket.io-client';

const [addr] = process.argv.slice(2);
const fail = (msg) => { console.error('FAIL', msg); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

const socket = io(`http://${addr}`, { transports: ['websocket'], reconnection: false });
await new Promise((resolve, reject) => { socket.on('connect', resolve); socket.on('connect_error', reject); });
const acks = await Promise.all(
  Array.from({ length: 8 }, () => new Promise((resolve) => socket.emit('whoami', resolve))),
);
const ok = acks.filter((a) => a && a.result).length;
const limited = acks.filter((a) => a && a.error && a.error.code === 114).length;
console.log(`answered ${ok}, refused ${limited}`);
if (ok !== 5 || limited !== 3) fail(JSON.stringify(acks));
// Far over the rate: disconnected by the server ("io server disconnect").
const reason = new Promise((resolve) => socket.on('disconnect', resolve));
for (let i = 0; i < 150; i++) socket.emit('whoami');
const why = await reason;
if (why !== 'io server disconnect') fail(`disconnected: ${why}`);
console.log('OK passed');

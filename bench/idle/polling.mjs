// Opens N socket.io-client sockets with the polling transport only (each holds a long-poll
// request open), then prints the server's RSS growth per session. Bounded: N sockets, 60 s.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { io } = createRequire(path.join(root, 'tests', 'fixture', 'package.json'))('socket.io-client');
const [url, pid, n] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const rssKiB = () => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);

const before = rssKiB();
const sockets = [];
let connected = 0;
const all = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`only ${connected} of ${n} sessions in 60 s`)), 60_000);
  for (let i = 0; i < n; i++) {
    const s = io(url, {
      transports: ['polling'],
      extraHeaders: { cookie: `sid=user-poll${i}` },
      reconnection: false,
      forceNew: true,
    });
    s.on('connect', () => ++connected === n && (clearTimeout(timer), resolve()));
    s.on('connect_error', (e) => (clearTimeout(timer), reject(e)));
    sockets.push(s);
  }
});
try {
  await all;
  await new Promise((r) => setTimeout(r, 2000));
  console.log(`long-polling session: ${((rssKiB() - before) / n).toFixed(2)} KiB each (${n} sessions)`);
} finally {
  sockets.forEach((s) => s.close());
}
process.exit(0);

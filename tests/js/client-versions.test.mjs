// Older socket.io-client releases against sockgate (issue 16): 3.1.3 (Engine.IO 4, the
// protocol sockgate speaks) works over long-polling, WebSocket and the upgrade and gets a user
// message as one argument; 2.5.0 (Engine.IO 3) is refused at once with a connect_error, it
// does not hang. Installed as npm aliases in tests/fixture (socket.io-client-3, -2).
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/client-versions.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { REPO_ROOT, startStack, publishOk, waitFor, withTimeout } from './harness.mjs';

const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
const io3 = fixtureRequire('socket.io-client-3');
const io2 = fixtureRequire('socket.io-client-2');

let s;
before(async () => {
  s = await startStack();
});
after(async () => {
  await s?.stop();
});

/** A socket of an old client release, closed after the test file. */
function oldClient(io, cookie, transports) {
  const socket = io(s.url, {
    transports,
    forceNew: true,
    reconnection: false,
    timeout: 5000,
    extraHeaders: { cookie },
    transportOptions: { polling: { extraHeaders: { cookie } }, websocket: { extraHeaders: { cookie } } },
  });
  after(() => socket.close());
  return socket;
}

for (const [name, transports, final] of [
  ['long-polling', ['polling'], 'polling'],
  ['WebSocket', ['websocket'], 'websocket'],
  ['polling upgraded to WebSocket', ['polling', 'websocket'], 'websocket'],
]) {
  test(`socket.io-client 3.1.3 over ${name}: connects, gets a user message as one argument`, async () => {
    const user = `v3-${final}-${transports.length}`;
    const socket = oldClient(io3, `sid=user-${user}`, transports);
    const events = [];
    socket.onAny((event, ...args) => events.push({ event, args }));
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', reject);
      }),
      5000,
      'socket.io-client 3.1.3 connects',
    );
    await waitFor(() => socket.io.engine.transport.name === final, { message: `on ${final}` });
    await waitFor(async () => (await s.publishApi('GET', `/users/${user}`)).json?.sockets === 1, {
      message: 'sockgate sees the socket',
    });
    await publishOk(s.publishSocket, { userId: user, event: 'notification', data: { title: 'v3', n: 3 } });
    await waitFor(() => events.length, { timeout: 5000, message: 'the message' });
    assert.deepEqual(events, [{ event: 'notification', args: [{ title: 'v3', n: 3 }] }]);
    assert.equal(socket.io.engine.transport.name, final);
    socket.close();
  });
}

for (const transports of [['polling'], ['websocket']]) {
  test(`socket.io-client 2.5.0 (Engine.IO 3) over ${transports}: refused with a connect_error at once, no hang`, async () => {
    const socket = oldClient(io2, 'sid=user-v2', transports);
    let connected = false;
    socket.on('connect', () => (connected = true));
    const started = Date.now();
    const err = await withTimeout(
      new Promise((resolve) => socket.once('connect_error', resolve)),
      5000,
      'socket.io-client 2.5.0 gets a connect_error',
    );
    const ms = Date.now() - started;
    assert.ok(ms < 3000, `refused in ${ms} ms, not by a timeout (timeout: 5000)`);
    assert.ok(err instanceof Error, `an Error: ${err}`);
    // engine.io-client 3 reports the refused handshake as a transport error with the status.
    assert.match(err.message, transports[0] === 'polling' ? /xhr poll error/ : /websocket error/);
    if (transports[0] === 'polling') assert.equal(err.description, 400);
    assert.equal(connected, false);
    const presence = await s.publishApi('GET', '/users/v2');
    assert.equal(presence.json?.sockets ?? 0, 0, 'no socket on the server');
    socket.close();
  });
}

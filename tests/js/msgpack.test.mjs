// `realtime.parser = "msgpack"`: apps whose clients use socket.io-msgpack-parser connect and
// get their messages (issue 16 item 5).
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/msgpack.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { createRequire } from 'node:module';
import { REPO_ROOT, startStack, client, connect, connectError, publishOk, waitFor } from './harness.mjs';

const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
const parser = fixtureRequire('socket.io-msgpack-parser');

let s;
before(async () => {
  s = await startStack({ env: { SIDECAR_REALTIME__PARSER: '"msgpack"' } });
});
after(async () => {
  await s?.stop();
});

/** Records every event with all its arguments. */
function allArgs(socket) {
  const events = [];
  socket.onAny((event, ...args) => events.push({ event, args }));
  return events;
}

const DATA = { text: 'héllo', n: 42, f: 1.5, list: [1, 'two', null, true], nested: { deep: [{}] } };

for (const transports of [['websocket'], ['polling'], ['polling', 'websocket']]) {
  test(`msgpack over ${transports.join('+')}: a user message arrives intact, with its offset when asked`, async () => {
    const user = `mp-${transports.join('-')}`;
    const plain = await connect(s.url, { cookie: `sid=user-${user}`, transports, parser });
    const recovering = await connect(s.url, { cookie: `sid=user-${user}`, transports, parser, auth: { offset: null } });
    const one = allArgs(plain);
    const two = allArgs(recovering);
    const r = await publishOk(s.publishSocket, { userId: user, event: 'notification', data: DATA });
    assert.equal(r.recipients, 2);
    await waitFor(() => one.length && two.length, { message: 'both sockets got the message' });
    assert.deepEqual(one, [{ event: 'notification', args: [DATA] }]);
    assert.equal(two.length, 1);
    assert.deepEqual(two[0].args[0], DATA);
    assert.equal(typeof two[0].args[1]?.offset, 'string', `the offset: ${JSON.stringify(two[0].args)}`);
    // A replay from that offset also comes msgpack-encoded.
    const offset = two[0].args[1].offset;
    recovering.close();
    await publishOk(s.publishSocket, { userId: user, event: 'notification', data: 'missed' });
    // Listening before the CONNECT: the replay follows it at once.
    const back = client(s.url, { cookie: `sid=user-${user}`, transports, parser, auth: { offset } });
    const replayed = allArgs(back);
    await waitFor(() => replayed.length, { message: () => 'the replay' }).catch((e) => { throw new Error(`no replay; got ${JSON.stringify(replayed)}`, { cause: e }); });
    assert.equal(replayed[0].args[0], 'missed');
    assert.equal(typeof replayed[0].args[1].offset, 'string');
    plain.close();
    back.close();
  });
}

test('msgpack: a broadcast reaches the socket', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-mpb', transports: ['websocket'], parser });
  const got = allArgs(sock);
  await publishOk(s.publishSocket, { broadcast: true, event: 'everyone', data: [1, 2, 3] });
  await waitFor(() => got.length, { message: 'the broadcast' });
  assert.deepEqual(got, [{ event: 'everyone', args: [[1, 2, 3]] }]);
  sock.close();
});

test('msgpack: no cookie, no socket', async () => {
  const err = await connectError(s.url, { transports: ['websocket'], parser });
  assert.ok(err, 'refused');
});

test('msgpack: a client event is still ignored, and the socket stays connected', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-mpe', transports: ['websocket'], parser });
  sock.emit('hello', { a: 1 });
  const got = allArgs(sock);
  await publishOk(s.publishSocket, { userId: 'mpe', event: 'after', data: 1 });
  await waitFor(() => got.length, { message: 'a message after the client event' });
  assert.ok(sock.connected);
  sock.close();
});

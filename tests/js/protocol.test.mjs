// Protocol fidelity (issue 16): a Socket.IO client written for a plain Socket.IO server works
// unchanged against sockgate.
//   node --test tests/js/protocol.test.mjs        (the cluster case needs redis-server on PATH)
//
// A user message is emitted with exactly what was published — one argument — unless the socket
// asked for recovery in its handshake (an `offset` or `offsets` key in `auth`, even `null`):
// then it gets `(data, {offset, room})`, live and replayed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startStack,
  startFixture,
  startSockgate,
  freePort,
  connect,
  connectError,
  client,
  nextEvent,
  publishOk,
  waitFor,
} from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';

/** Records every event with all its arguments, as received. */
function allArgs(socket) {
  const events = [];
  socket.onAny((event, ...args) => events.push({ event, args }));
  return events;
}

const TRANSPORTS = [['websocket'], ['polling'], ['polling', 'websocket']];

test('single instance: one argument unless the handshake asked for offsets', async () => {
  const stack = await startStack();
  after(() => stack.stop());
  for (const transports of TRANSPORTS) {
    const plain = await connect(stack.url, { cookie: 'sid=user-pp', transports });
    const noAuth = allArgs(plain);
    const other = await connect(stack.url, { cookie: 'sid=user-pp', transports, auth: { token: 'x' } });
    const otherAuth = allArgs(other);
    const recovering = await connect(stack.url, { cookie: 'sid=user-pp', transports, auth: { offset: null } });
    const withOffset = allArgs(recovering);
    const r = await publishOk(stack.publishSocket, { userId: 'pp', event: 'notification', data: { hi: transports.join('+') } });
    assert.equal(r.recipients, 3, 'every socket of the user is a recipient');
    await waitFor(() => noAuth.length && otherAuth.length && withOffset.length, { message: `all three got it (${transports})` });
    assert.deepEqual(noAuth, [{ event: 'notification', args: [{ hi: transports.join('+') }] }], 'no auth: one argument');
    assert.deepEqual(otherAuth, [{ event: 'notification', args: [{ hi: transports.join('+') }] }], 'auth without offset: one argument');
    assert.equal(withOffset.length, 1);
    assert.equal(withOffset[0].args.length, 2, 'offset: null asks for (data, {offset})');
    assert.deepEqual(withOffset[0].args[0], { hi: transports.join('+') });
    assert.equal(typeof withOffset[0].args[1].offset, 'string');
    // Presence, stats and kicks see every socket of the user, whatever shape it asked for.
    const presence = await stack.publishApi('GET', '/users/pp');
    assert.equal(presence.json.sockets, 3, 'presence counts all three');
    const stats = await stack.publishApi('GET', '/stats');
    assert.equal(stats.json.users, 1);
    assert.equal(stats.json.rooms, 1, 'the recovery room is internal, not counted');
    const kicked = await stack.publishApi('POST', '/users/pp/disconnect');
    assert.equal(kicked.json.disconnected, 3, 'a kick reaches all three');
    plain.close();
    other.close();
    recovering.close();
  }
});

test('single instance: a replay has the same shape as the live messages', async () => {
  const stack = await startStack();
  after(() => stack.stop());
  // Messages published before a socket's handshake with a known offset are replayed to it.
  const first = await connect(stack.url, { cookie: 'sid=user-pr', transports: ['websocket'], auth: { offset: null } });
  const got = nextEvent(first, 'notification');
  await publishOk(stack.publishSocket, { userId: 'pr', event: 'notification', data: 0 });
  await got;
  const offset = await new Promise((resolve) => {
    first.once('notification', (_d, meta) => resolve(meta.offset));
    publishOk(stack.publishSocket, { userId: 'pr', event: 'notification', data: 1 });
  });
  first.close();
  await publishOk(stack.publishSocket, { userId: 'pr', event: 'notification', data: 2 });
  const again = client(stack.url, { cookie: 'sid=user-pr', transports: ['websocket'], auth: { offset } });
  const replayed = allArgs(again);
  await waitFor(() => replayed.length >= 1, { message: 'the replay' });
  assert.equal(replayed[0].args.length, 2);
  assert.equal(replayed[0].args[0], 2);
  assert.equal(typeof replayed[0].args[1].offset, 'string');
  again.close();
});

test('single instance: the replay to a socket without offset has one argument', async () => {
  // A socket without `offset` still replays what was published between its handshake and
  // its joining (history on); those messages must keep the one-argument shape. Publishing
  // right as it connects exercises that window; every message must have one argument.
  const stack = await startStack();
  after(() => stack.stop());
  const s = client(stack.url, { cookie: 'sid=user-pq', transports: ['websocket'] });
  const events = allArgs(s);
  const connected = nextEvent(s, 'connect');
  const pubs = [];
  for (let i = 0; i < 20; i++) pubs.push(publishOk(stack.publishSocket, { userId: 'pq', event: 'n', data: i }));
  await Promise.all(pubs);
  await connected;
  await publishOk(stack.publishSocket, { userId: 'pq', event: 'n', data: 'last' });
  await waitFor(() => events.some((e) => e.args[0] === 'last'), { message: 'the last message' });
  for (const e of events) assert.equal(e.args.length, 1, `one argument: ${JSON.stringify(e)}`);
  s.close();
});

const REDIS = findRedisServer();
test(
  'cluster: a message published through one instance has the shape each socket asked for on the other',
  { skip: REDIS ? false : 'redis-server is not on PATH' },
  async () => {
    const fixture = await startFixture();
    const redisPort = await freePort();
    const redis = await startRedis(redisPort);
    const env = { SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`, SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' };
    const [A, B] = await Promise.all([
      startSockgate({ upstreamUrl: fixture.url, env }),
      startSockgate({ upstreamUrl: fixture.url, env }),
    ]);
    after(async () => {
      await Promise.all([A.stop(), B.stop()]).catch(() => {});
      await fixture.stop().catch(() => {});
      await redis.kill('SIGKILL').catch(() => {});
    });
    const plain = await connect(B.url, { cookie: 'sid=user-pc', transports: ['websocket'] });
    const recovering = await connect(B.url, { cookie: 'sid=user-pc', transports: ['websocket'], auth: { offset: null } });
    const one = allArgs(plain);
    const two = allArgs(recovering);
    await publishOk(A.publishSocket, { userId: 'pc', event: 'notification', data: { via: 'A' } });
    await publishOk(A.publishSocket, { userId: 'pc', event: 'marker', data: 'end' });
    // In cluster mode a socket that asks for offsets may get a message twice (live, and from
    // the stream read right after it joins its room); clients drop an offset seen already.
    const seen = new Set();
    const firstTimes = () => two.filter((e) => !seen.has(e.args[1]?.offset) && seen.add(e.args[1]?.offset));
    await waitFor(() => one.length >= 2 && new Set(two.map((e) => e.args[1]?.offset)).size >= 2, {
      message: 'both sockets on B got both',
    });
    assert.deepEqual(one, [
      { event: 'notification', args: [{ via: 'A' }] },
      { event: 'marker', args: ['end'] },
    ]);
    assert.deepEqual(firstTimes().map((e) => [e.event, e.args[0], e.args.length]), [
      ['notification', { via: 'A' }, 2],
      ['marker', 'end', 2],
    ]);
    assert.equal(typeof two[0].args[1].offset, 'string');
    plain.close();
    recovering.close();
  },
);

test('a custom namespace is refused with connect_error "Invalid namespace", as a server without it', async () => {
  const stack = await startStack();
  after(() => stack.stop());
  for (const transports of [['websocket'], ['polling']]) {
    const err = await connectError(`${stack.url}/admin`, { cookie: 'sid=user-ns', transports });
    assert.match(err.message, /Invalid namespace/, `${transports}: ${err.message}`);
  }
});

test('an event a client emits with an ack is never answered (no client events); the socket stays connected', async () => {
  const stack = await startStack();
  after(() => stack.stop());
  for (const transports of [['websocket'], ['polling']]) {
    const socket = await connect(stack.url, { cookie: 'sid=user-ack', transports });
    await assert.rejects(socket.timeout(1000).emitWithAck('hello', { from: 'client' }), /operation has timed out/);
    socket.emit('no-ack', 1);
    assert.equal(socket.connected, true, `${transports}: still connected`);
    const got = nextEvent(socket, 'notification');
    await publishOk(stack.publishSocket, { userId: 'ack', event: 'notification', data: 'after the ack' });
    assert.equal(await got, 'after the ack', `${transports}: messages still arrive`);
    socket.close();
  }
});

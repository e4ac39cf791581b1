// Never miss a notification: a client that was away reports its last offset and gets what
// was published meanwhile — once, in order, before live messages — or `recovery_failed`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, spawn } from 'node:child_process';

import {
  startStack, startFixture, startSockgate, client, connect, nextEvent, recorder, waitFor, freePort, sleep,
  publishOk, tmpDir, recoveringClient, connected,
} from './harness.mjs';
import path from 'node:path';

test('single instance: 20 messages published while away arrive once, in order, before live ones', async () => {
  const stack = await startStack({ env: { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' } });
  after(() => stack.stop());
  const { socket, state } = recoveringClient(stack.url, 'sid=user-rec1');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(stack.publishSocket, { userId: 'rec1', data: { n: 0 } });
  await rec.waitCount(1);
  assert.ok(state.lastOffset, 'messages carry an offset beside the payload');

  socket.disconnect(); // the network goes away
  await waitFor(async () => (await stack.publishApi('GET', '/users/rec1')).json.sockets === 0, {
    message: 'sockgate saw the client leave',
  });
  for (let n = 1; n <= 20; n++) {
    const r = await publishOk(stack.publishSocket, { userId: 'rec1', data: { n } });
    assert.equal(r.recipients, 0);
  }
  // Reconnect, and publish a live one as soon as the client says it is connected.
  const live = nextEvent(socket, 'connect', 5000).then(() =>
    publishOk(stack.publishSocket, { userId: 'rec1', data: { n: 21 } }),
  );
  socket.connect();
  await live;
  await rec.waitCount(22, '22 notifications');
  await sleep(200);
  const ns = rec.of('notification').map((d) => d.n);
  assert.deepEqual(ns, Array.from({ length: 22 }, (_, i) => i), 'all once, in order, replay before live');
  const offsets = rec.metas.map((m) => m.offset);
  assert.equal(new Set(offsets).size, offsets.length, 'offsets are unique');
});

test('a fresh client misses nothing published right after it connects', async () => {
  const stack = await startStack({ env: { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' } });
  after(() => stack.stop());
  for (let i = 0; i < 10; i++) {
    const { socket } = recoveringClient(stack.url, `sid=user-fresh${i}`);
    const rec = recorder(socket);
    const published = nextEvent(socket, 'connect', 5000).then(() =>
      publishOk(stack.publishSocket, { userId: `fresh${i}`, data: i }),
    );
    socket.connect();
    await published;
    await rec.waitCount(1, `fresh client ${i} got the message published on connect`);
    socket.disconnect();
  }
});

test('history overflow → recovery_failed, then live delivery continues', async () => {
  const stack = await startStack({
    env: { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]', SIDECAR_HISTORY__MAX_MESSAGES: '5' },
  });
  after(() => stack.stop());
  const { socket } = recoveringClient(stack.url, 'sid=user-over');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(stack.publishSocket, { userId: 'over', data: 0 });
  await rec.waitCount(1);
  socket.disconnect();
  for (let n = 1; n <= 20; n++) await publishOk(stack.publishSocket, { userId: 'over', data: n });
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed');
  assert.deepEqual(rec.of('notification'), [0], 'nothing partial is replayed after a gap');
  await publishOk(stack.publishSocket, { userId: 'over', data: 21 });
  await rec.waitFor((e) => e.event === 'notification' && e.args[0] === 21, 'live message');
});

test('in-memory history does not survive a restart: the client is told, not left silent', async () => {
  const fixture = await startFixture();
  after(() => fixture.stop());
  const port = await freePort();
  const env = { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' };
  let sg = await startSockgate({ port, upstreamUrl: fixture.url, env });
  const { socket } = recoveringClient(sg.url, 'sid=user-rs', { reconnection: true, reconnectionDelay: 100 });
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'rs', data: 1 });
  await rec.waitCount(1);
  await sg.stop('SIGTERM');
  sg = await startSockgate({ port, upstreamUrl: fixture.url, env });
  after(() => sg.stop());
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed after restart', 10000);
});

const haveRedis = spawnSync('redis-server', ['--version']).status === 0;

test('cluster: reconnecting to the OTHER instance recovers from Redis streams', { skip: !haveRedis && 'redis-server not installed' }, async () => {
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  after(() => redis.kill('SIGKILL'));
  await waitFor(() => spawnSync('redis-cli', ['-p', String(redisPort), 'ping']).stdout?.toString().includes('PONG'), { message: 'redis up' });
  const fixture = await startFixture();
  after(() => fixture.stop());
  const env = {
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
  };
  const a = await startSockgate({ upstreamUrl: fixture.url, env });
  const b = await startSockgate({ upstreamUrl: fixture.url, env });
  after(() => Promise.all([a.stop(), b.stop()]));

  const { socket, state } = recoveringClient(a.url, 'sid=user-cl');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(a.publishSocket, { userId: 'cl', data: 0 });
  await rec.waitCount(1);
  socket.disconnect();
  for (let n = 1; n <= 20; n++) await publishOk(a.publishSocket, { userId: 'cl', data: n });

  // The load balancer sends the reconnect to the other instance.
  const { socket: again } = recoveringClient(b.url, 'sid=user-cl');
  const rec2 = recorder(again);
  const offset = state.lastOffset;
  again.auth = (cb) => cb({ offset });
  await connected(again);
  await rec2.waitCount(20, '20 replayed from Redis');
  await sleep(200);
  assert.deepEqual(rec2.of('notification'), Array.from({ length: 20 }, (_, i) => i + 1));

  // A sockgate restart loses nothing either: history lives in Redis.
  const last = rec2.metas.at(-1).offset;
  again.disconnect();
  await b.stop('SIGTERM');
  for (let n = 21; n <= 25; n++) await publishOk(a.publishSocket, { userId: 'cl', data: n });
  const b2 = await startSockgate({ upstreamUrl: fixture.url, env });
  after(() => b2.stop());
  const { socket: third } = recoveringClient(b2.url, 'sid=user-cl');
  third.auth = (cb) => cb({ offset: last });
  const rec3 = recorder(third);
  await connected(third);
  await rec3.waitCount(5, '5 replayed after restart');
  assert.deepEqual(rec3.of('notification'), [21, 22, 23, 24, 25]);
});

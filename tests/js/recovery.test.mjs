// Never miss a notification: a client that was away reports its last offset and gets what
// was published meanwhile — once, in order, before live messages — or `recovery_failed`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, spawn } from 'node:child_process';

import {
  startStack, startFixture, startSockgate, client, connect, nextEvent, recorder, waitFor, freePort, sleep,
  publishOk, tmpDir, recoveringClient, connected, rssKiB,
} from './harness.mjs';
import { metrics } from './fault-helpers.mjs';
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

/** A user who saw message 0, went away, and missed message 1. */
async function missedOne(stack, userId) {
  const { socket, state } = recoveringClient(stack.url, `sid=user-${userId}`);
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(stack.publishSocket, { userId, data: 0 });
  await rec.waitCount(1);
  assert.ok(state.lastOffset, 'the message carried an offset');
  socket.disconnect();
  await waitFor(async () => (await stack.publishApi('GET', `/users/${userId}`)).json.sockets === 0, {
    message: `sockgate saw ${userId} leave`,
  });
  await publishOk(stack.publishSocket, { userId, data: 1 });
  return { socket, rec };
}

test('in-memory history stays within history.max_bytes: oldest rooms evicted, their offsets → recovery_failed', async () => {
  const cap = 1024 * 1024;
  const stack = await startStack({
    env: { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]', SIDECAR_HISTORY__MAX_BYTES: String(cap) },
  });
  after(() => stack.stop());
  // Its room soon the oldest.
  const { socket, rec } = await missedOne(stack, 'evicted');

  // 30,000 messages of 1 KB to distinct offline users (RSS +64.5 MiB without a cap).
  const before = rssKiB(stack.sockgate.pid);
  const text = 'x'.repeat(1000);
  const users = 30_000;
  const perBatch = 500;
  for (let first = 0; first < users; first += perBatch) {
    const messages = Array.from({ length: perBatch }, (_, i) => ({ userId: `u${first + i}`, data: { text } }));
    const r = await stack.publishApi('POST', '/publish/batch', { messages });
    assert.equal(r.status, 200, r.text);
  }
  const grewMiB = (rssKiB(stack.sockgate.pid) - before) / 1024;
  assert.ok(grewMiB < 20, `RSS grew ${grewMiB.toFixed(1)} MiB for ${users} × 1 KB to distinct users (cap 1 MiB)`);
  const m = await metrics(stack.publishSocket);
  const kept = m.get('sockgate_history_bytes');
  assert.ok(kept > 0 && kept <= cap, `history holds ${kept} bytes, cap ${cap}`);
  assert.ok(m.get('sockgate_history_rooms_evicted_total') >= users / 2, `evictions counted: ${m.get('sockgate_history_rooms_evicted_total')}`);

  // The evicted room's offset is a gap, told, never a silent skip.
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed for the evicted room');
  assert.deepEqual(rec.of('notification'), [0], 'nothing of the evicted room is replayed');
  assert.equal(rec.of('recovery_failed')[0].room, 'user:evicted');
  socket.disconnect();

  // A room published to since is kept and still recovers.
  const { socket: recent, rec: rec2 } = await missedOne(stack, 'recent');
  await connected(recent);
  await rec2.waitCount(2, 'the missed message replayed');
  assert.deepEqual(rec2.of('notification'), [0, 1]);
  assert.deepEqual(rec2.of('recovery_failed'), []);
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

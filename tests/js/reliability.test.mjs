// Reliability tests: dead and slow clients really leave (transport, rooms, presence, stats,
// connection slot and file descriptor), and Redis faults never lose messages silently.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/reliability.test.mjs
// Each test reproduces the fault at the wire level (a client that stops reading while its TCP
// connection stays open; redis-server killed, restarted, or stopped with SIGSTOP).
import { test } from 'node:test';
import net from 'node:net';
import assert from 'node:assert/strict';
import {
  startStack,
  startSockgate,
  startFixture,
  connect,
  closeAll,
  waitFor,
  sleep,
  freePort,
  publishApi,
  recorder,
} from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';
import { metrics, stalledSocketIoClient, serverSideEstablished } from './fault-helpers.mjs';

/** 60 KiB of payload: a few hundred of these fill any loopback socket buffer. */
const BIG = 'x'.repeat(60 * 1024);

async function stats(s) {
  const r = await s.publishApi('GET', '/stats');
  assert.equal(r.status, 200, r.text);
  return r.json;
}

async function presence(s, user) {
  const r = await s.publishApi('GET', `/users/${user}`);
  assert.equal(r.status, 200, r.text);
  return r.json.sockets;
}

const count = (text, needle) => text.split(needle).length - 1;

/**
 * Publishes BIG to `target` until `done()` or `max` messages; returns how many were sent.
 * Bounded in count and in time.
 */
async function flood(s, target, { max = 400, until = () => false, deadlineMs = 30_000 } = {}) {
  const stopAt = Date.now() + deadlineMs;
  let sent = 0;
  while (sent < max && Date.now() < stopAt) {
    const r = await s.publishApi('POST', '/publish', { ...target, event: 'flood', data: BIG });
    assert.equal(r.status, 200, r.text);
    sent += 1;
    if (sent % 10 === 0 && (await until())) break;
  }
  return sent;
}

/** The socket is gone for real: no presence, not in /stats, server side of TCP closed. */
async function assertGone(s, stalled, user, message) {
  await waitFor(async () => (await presence(s, user)) === 0, { timeout: 5000, message: `${message}: presence 0` });
  await waitFor(async () => (await stats(s)).connections === 0, { timeout: 5000, message: `${message}: /stats 0` });
  await waitFor(() => !serverSideEstablished(s.port, stalled.clientPort), {
    timeout: 5000,
    message: `${message}: server side of the TCP connection closed`,
  });
}

for (const [name, target] of [
  ['per-user publishes', { userId: 'slow' }],
  ['broadcasts', { broadcast: true }],
]) {
  test(`slow consumer (${name}): a socket that stops reading is closed for real, once, and its slot is freed`, async (t) => {
    const s = await startStack({
      env: { SIDECAR_REALTIME__MAX_BUFFER_SIZE: '16', SIDECAR_REALTIME__MAX_CONNECTIONS: '1' },
    });
    try {
      const stalled = await stalledSocketIoClient(s.url, { cookie: 'sid=user-slow' });
      const slowCount = async () =>
        (await metrics(s.publishSocket)).get('sockgate_slow_consumers_disconnected_total') ?? 0;
      const sent = await flood(s, target, { until: async () => (await slowCount()) > 0 });
      // Keep publishing a while after the first drop: each must not count again.
      await flood(s, target, { max: 40 });
      t.diagnostic(`fault: ${sent} × 60 KiB to a socket that stopped reading before it was dropped`);
      await assertGone(s, stalled, 'slow', 'slow consumer');
      assert.equal(await slowCount(), 1, 'counted once per socket');
      assert.equal(count(s.sockgate.text(), 'slow consumer disconnected'), 1, 'logged once per socket');
      // The only slot (max_connections = 1) is free again.
      const next = await connect(s.url, { cookie: 'sid=user-next', transports: ['websocket'] });
      closeAll([next]);
    } finally {
      await s.stop();
    }
  });
}

for (const [queue, size] of [
  ['full (16 slots)', '16'],
  ['not full (4096 slots) but stuck behind a full TCP buffer', '4096'],
]) test(`kick of a socket that stopped reading, queue ${queue}: 200, the transport closes, nothing published after the kick arrives`, async (t) => {
  const s = await startStack({ env: { SIDECAR_REALTIME__MAX_BUFFER_SIZE: size } });
  try {
    const stalled = await stalledSocketIoClient(s.url, { cookie: 'sid=user-kicked' });
    // Fill the kernel buffers and the socket's queue.
    await flood(s, { userId: 'kicked' }, { max: 200 });
    const kick = await s.publishApi('POST', '/users/kicked/disconnect');
    t.diagnostic(`fault: kick of a socket with a full queue → ${kick.status} ${kick.text}`);
    assert.equal(kick.status, 200, kick.text);
    const after = await s.publishApi('POST', '/publish', { userId: 'kicked', event: 'after-kick', data: 'late' });
    assert.equal(after.status, 200, after.text);
    await assertGone(s, stalled, 'kicked', 'kicked socket');
    // The client reads again: it drains what was already on the wire, then sees the close.
    stalled.resume();
    const closed = await stalled.closed;
    const late = stalled.messages.filter((m) => typeof m === 'string' && m.includes('after-kick'));
    t.diagnostic(`fault: kicked client drained ${stalled.messages.length} frames, then close ${closed.code}`);
    assert.equal(late.length, 0, 'a message published after the kick never reaches the kicked client');
  } finally {
    await s.stop();
  }
});

test('heartbeat timeout of sockets stuck writing: rooms, stats, slots and TCP freed within ping interval + timeout', async (t) => {
  const N = 4;
  // Long enough that the flood (250 × 60 KiB through a debug build on a loaded CI machine)
  // ends before the heartbeat can close anything: the count right after it must still be N.
  const INTERVAL = 3000;
  const TIMEOUT = 3000;
  const s = await startStack({
    env: {
      SIDECAR_REALTIME__PING_INTERVAL_MS: String(INTERVAL),
      SIDECAR_REALTIME__PING_TIMEOUT_MS: String(TIMEOUT),
      // A queue large enough never to overflow here: only the heartbeat can close them.
      SIDECAR_REALTIME__MAX_BUFFER_SIZE: '4096',
      SIDECAR_REALTIME__MAX_CONNECTIONS: String(N),
    },
  });
  try {
    const stalled = [];
    for (let i = 0; i < N; i++) stalled.push(await stalledSocketIoClient(s.url, { cookie: `sid=user-hb${i}` }));
    // A broadcast flood fills their kernel buffers: the writers block mid-write.
    await flood(s, { broadcast: true }, { max: 250 });
    const floodedAt = Date.now();
    assert.equal((await stats(s)).connections, N, 'still counted right after the flood');
    for (const c of stalled) {
      await waitFor(() => !serverSideEstablished(s.port, c.clientPort), {
        timeout: INTERVAL + TIMEOUT + 5000,
        message: 'the stalled socket\'s TCP connection to be closed by the server',
      });
    }
    await waitFor(async () => (await stats(s)).connections === 0, { timeout: 3000, message: '/stats 0' });
    t.diagnostic(`fault: ${N} stalled sockets gone ${Date.now() - floodedAt} ms after the flood`);
    for (let i = 0; i < N; i++) assert.equal(await presence(s, `hb${i}`), 0);
    // Every slot is free again (max_connections = N).
    const fresh = [];
    for (let i = 0; i < N; i++) fresh.push(await connect(s.url, { cookie: `sid=user-new${i}`, transports: ['websocket'] }));
    closeAll(fresh);
  } finally {
    await s.stop();
  }
});

test('readiness: an app that accepts TCP but never answers HTTP is not ready (503 with the reason); the real app is', async (t) => {
  // Accepts connections, reads requests, never answers.
  const held = [];
  let requests = 0;
  const mute = net.createServer((sock) => {
    held.push(sock);
    sock.once('data', () => (requests += 1));
    sock.on('error', () => {});
  });
  const port = await freePort();
  await new Promise((r) => mute.listen(port, '127.0.0.1', r));
  const sg = await startSockgate({ upstreamUrl: `http://127.0.0.1:${port}` });
  try {
    const started = Date.now();
    const r = await publishApi(sg.publishSocket, 'GET', '/readyz');
    t.diagnostic(`fault: app accepts TCP, never answers → /readyz ${r.status} ${r.text} in ${Date.now() - started} ms`);
    assert.equal(r.status, 503, r.text);
    assert.match(r.json.reason, /did not answer/);
    assert.ok(Date.now() - started < 3000, 'answered promptly');
    // A probe storm costs the app about one HTTP request per second, not one per probe.
    const before = requests;
    await Promise.all(Array.from({ length: 20 }, () => publishApi(sg.publishSocket, 'GET', '/readyz')));
    assert.ok(requests - before <= 2, `${requests - before} HTTP requests to the app for 20 probes`);
  } finally {
    await sg.stop();
    for (const s of held) s.destroy();
    mute.close();
  }
  const s = await startStack();
  try {
    const r = await s.publishApi('GET', '/readyz');
    assert.equal(r.status, 200, r.text);
  } finally {
    await s.stop();
  }
});

// ---------------------------------------------------------------------------
// Redis faults (cluster mode)
// ---------------------------------------------------------------------------
const NO_REDIS = findRedisServer() ? false : 'redis-server is not on PATH';

async function cluster(redisPort, fixture) {
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
  };
  return Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
}

/** Publishes on `from` for `userId` until `rec` has it; resolves the ms it took, or throws. */
async function crossDelivery(from, rec, userId, { timeout = 20_000 } = {}) {
  const started = Date.now();
  let n = 0;
  while (Date.now() - started < timeout) {
    const tag = `probe-${Date.now()}-${n++}`;
    const r = await publishApi(from.publishSocket, 'POST', '/publish', { userId, event: 'probe', data: tag });
    assert.equal(r.status, 200, r.text);
    const deadline = Date.now() + 500;
    while (Date.now() < deadline) {
      if (rec.events.some((e) => e.event === 'probe' && e.args[0] === tag)) return Date.now() - started;
      await sleep(25);
    }
  }
  throw new Error(`no cross-instance delivery to ${userId} within ${timeout} ms`);
}

test('Redis restarted, then stalled (SIGSTOP) for 40 s and resumed: publishes never wait on it, readiness says so, cross-instance delivery comes back', { skip: NO_REDIS, timeout: 150_000 }, async (t) => {
  const fixture = await startFixture();
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  const [A, B] = await cluster(redisPort, fixture);
  const aliceB = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const carolA = await connect(A.url, { cookie: 'sid=user-carol', transports: ['websocket'] });
  const ra = recorder(aliceB);
  const rc = recorder(carolA);
  try {
    await crossDelivery(A, ra, 'alice', { timeout: 5000 });

    await redis.kill('SIGKILL');
    await sleep(500);
    redis = await startRedis(redisPort);
    t.diagnostic(`fault: after a Redis restart, A → B delivery back in ${await crossDelivery(A, ra, 'alice')} ms`);

    // --- stall: the process is stopped for 40 s, its TCP connections stay up ---
    const STALL_MS = 40_000;
    const connections = async () =>
      Number((await redisCommand(redisPort, 'INFO', 'stats')).match(/total_connections_received:(\d+)/)[1]);
    const connectionsBefore = await connections();
    process.kill(redis.pid, 'SIGSTOP');
    const stalledAt = Date.now();
    try {
      const markedDown = waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 503, {
        timeout: 5000,
        interval: 25,
        message: '/readyz on A to report the stalled Redis',
      }).then(() => Date.now() - stalledAt);
      // Five concurrent publishes to a user on A at once: about one command timeout, not
      // serialised behind the stalled commands.
      const started = Date.now();
      const times = await Promise.all(
        [0, 1, 2, 3, 4].map(async (i) => {
          const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'carol', event: 'stall', data: i });
          assert.equal(r.status, 200, r.text);
          return Date.now() - started;
        }),
      );
      const downMs = await markedDown;
      const ready = await publishApi(A.publishSocket, 'GET', '/readyz');
      t.diagnostic(`fault: Redis stalled → 5 concurrent publishes finished at ${times.join(', ')} ms; link marked down after ${downMs} ms (${ready.text})`);
      assert.ok(Math.max(...times) < 1600, `publishes as a stall begins: ${times}`);
      assert.ok(downMs < 1600, `link marked down after ${downMs} ms`);
      assert.match(ready.json.reason, /Redis/);
      await waitFor(() => rc.of('stall').length === 5, { timeout: 3000, message: 'carol (on A) gets all 5' });
      // Presence answers promptly (locally).
      const p0 = Date.now();
      const pres = await publishApi(A.publishSocket, 'GET', '/users/carol');
      assert.equal(pres.json.sockets, 1, pres.text);
      assert.ok(Date.now() - p0 < 500, `presence during the stall took ${Date.now() - p0} ms`);
      // A new user still gets in (the cluster-wide kick check is skipped while the link is down).
      const c0 = Date.now();
      const dave = await connect(A.url, { cookie: 'sid=user-dave', transports: ['websocket'] });
      t.diagnostic(`fault: a new socket during the stall connected in ${Date.now() - c0} ms`);
      dave.close();
      // And so on through the whole stall: nothing waits on Redis (bounded: one every 2 s).
      let slowest = 0;
      for (let i = 0; i < 25 && Date.now() - stalledAt < STALL_MS - 2000; i++) {
        await sleep(2000);
        const q0 = Date.now();
        const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'carol', event: 'later', data: i });
        assert.equal(r.status, 200, r.text);
        slowest = Math.max(slowest, Date.now() - q0);
      }
      t.diagnostic(`fault: later in the stall, the slowest publish took ${slowest} ms`);
      assert.ok(slowest < 500, `a publish ${Math.round((Date.now() - stalledAt) / 1000)} s into the stall took ${slowest} ms`);
      await sleep(Math.max(0, STALL_MS - (Date.now() - stalledAt)));
    } finally {
      process.kill(redis.pid, 'SIGCONT');
    }
    const resumedAt = Date.now();
    await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 200, {
      timeout: 10_000,
      interval: 25,
      message: '/readyz on A to be 200 again',
    });
    const backMs = Date.now() - resumedAt;
    const back = await crossDelivery(A, ra, 'alice', { timeout: 30_000 });
    const opened = (await connections()) - connectionsBefore;
    t.diagnostic(`fault: after a 40 s stall, A ready ${backMs} ms and A → B delivery back ${back} ms after SIGCONT; ${opened} connections opened to Redis during the stall`);
    assert.ok(backMs < 2000, `A ready ${backMs} ms after SIGCONT`);
    // Reconnects are spaced (no storm), and a stalled Redis is not "rebuilt" around.
    assert.ok(opened < 120, `${opened} connections to Redis during a 40 s stall`);
    for (const s of [A, B]) {
      assert.equal((await metrics(s.publishSocket)).get('sockgate_cluster_link_rebuilds_total') ?? 0, 0, 'no rebuild');
    }
    await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 200, {
      timeout: 10_000,
      message: '/readyz on A to be 200 again',
    });
    // And it stays: several in a row.
    for (let i = 0; i < 5; i++) await crossDelivery(A, ra, 'alice', { timeout: 3000 });
  } finally {
    closeAll([aliceB, carolA]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

/** Sends one command to Redis over raw RESP and resolves its first reply line. */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args.join(' ')} timed out`));
    }, 5000);
    sock.once('error', reject);
    sock.once('data', (d) => {
      clearTimeout(timer);
      sock.end();
      resolve(d.toString().trim());
    });
    sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
  });
}

test('a link that looks healthy but carries nothing (Redis answers PING, publishes held by CLIENT PAUSE WRITE): the self-check notices, logs why, /readyz 503, local publishes do not wait; recovers', { skip: NO_REDIS, timeout: 60_000 }, async (t) => {
  const fixture = await startFixture();
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const [A, B] = await cluster(redisPort, fixture);
  const aliceB = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const carolA = await connect(A.url, { cookie: 'sid=user-carol', transports: ['websocket'] });
  const ra = recorder(aliceB);
  const rc = recorder(carolA);
  try {
    await crossDelivery(A, ra, 'alice', { timeout: 5000 });
    const canary = async () => (await metrics(A.publishSocket)).get('sockgate_cluster_canary_seconds');
    await waitFor(async () => (await canary()) > 0, { timeout: 5000, message: 'a first self-check round trip' });
    await waitFor(async () => (await metrics(A.publishSocket)).get('sockgate_cluster_canary_peers') === 1, {
      timeout: 5000,
      message: "A to see B's self-check messages",
    });

    // Redis keeps every connection and answers reads, but holds every publish.
    const PAUSE_MS = 6000;
    assert.equal(await redisCommand(redisPort, 'CLIENT', 'PAUSE', String(PAUSE_MS), 'WRITE'), '+OK');
    const pausedAt = Date.now();
    await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 503, {
      timeout: 4000,
      message: '/readyz on A to report that messages do not flow',
    });
    const ready = await publishApi(A.publishSocket, 'GET', '/readyz');
    t.diagnostic(`fault: publishes held by Redis → A /readyz ${ready.status} ${ready.text} after ${Date.now() - pausedAt} ms`);
    assert.match(ready.json.reason, /self-check/);
    assert.match(A.proc.text(), /cluster self-check failed/);
    assert.ok(((await metrics(A.publishSocket)).get('sockgate_cluster_canary_failures_total') ?? 0) >= 1);
    const p0 = Date.now();
    const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'carol', event: 'local', data: 1 });
    assert.equal(r.status, 200, r.text);
    t.diagnostic(`fault: a publish to a local user while Redis holds publishes took ${Date.now() - p0} ms`);
    assert.ok(Date.now() - p0 < 1500, `local publish took ${Date.now() - p0} ms`);
    await waitFor(() => rc.of('local').length === 1, { timeout: 2000, message: 'carol (on A) gets it' });

    await sleep(Math.max(0, PAUSE_MS - (Date.now() - pausedAt)));
    await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 200, {
      timeout: 10_000,
      message: '/readyz on A to be 200 again',
    });
    t.diagnostic(`fault: A ready again ${Date.now() - pausedAt - PAUSE_MS} ms after the pause ended`);
    assert.match(A.proc.text(), /cluster self-check passes again/);
    await crossDelivery(A, ra, 'alice', { timeout: 10_000 });
  } finally {
    closeAll([aliceB, carolA]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

// The socket stalls on one instance; publishes and kicks are made on the other, so what closes
// it is the broadcast or the disconnect arriving from Redis, not the publishing instance.
async function stalledInCluster(t, body) {
  const fixture = await startFixture();
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    SIDECAR_REALTIME__MAX_BUFFER_SIZE: '16',
  };
  const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
  const withApi = (S) => ({ ...S, publishApi: (m, p, b, o) => publishApi(S.publishSocket, m, p, b, o) });
  try {
    await body(withApi(A), withApi(B));
  } finally {
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
}

for (const [where, pick] of [
  ['the publishing instance', (a, b) => [a, a]],
  ['another instance (publishes arrive from Redis)', (a, b) => [a, b]],
]) test(`cluster: a slow consumer on ${where} is closed the same way (publish answers 200, socket gone, counted once, by its own instance)`, { skip: NO_REDIS, timeout: 60_000 }, async (t) => {
  await stalledInCluster(t, async (A, B) => {
    const [publisher, owner] = pick(A, B);
    const stalled = await stalledSocketIoClient(owner.url, { cookie: 'sid=user-slow' });
    await waitFor(async () => (await presence(publisher, 'slow')) === 1, { timeout: 5000, message: 'the stalled socket seen cluster-wide' });
    const slowCount = async (S) =>
      (await metrics(S.publishSocket)).get('sockgate_slow_consumers_disconnected_total') ?? 0;
    const sent = await flood(publisher, { userId: 'slow' }, { max: 600, until: async () => (await slowCount(owner)) > 0 });
    await flood(publisher, { broadcast: true }, { max: 20 });
    t.diagnostic(`fault: cluster mode, ${sent} × 60 KiB before the slow consumer was closed`);
    await assertGone(owner, stalled, 'slow', 'slow consumer (cluster)');
    assert.equal(await slowCount(owner), 1, 'counted once, by the instance that owns the socket');
    if (publisher !== owner) assert.equal(await slowCount(publisher), 0, 'not counted by the publishing instance');
  });
});

test('cluster: a kick made on another instance closes a socket that stopped reading (its queue filled from there); nothing published after it arrives', { skip: NO_REDIS, timeout: 60_000 }, async (t) => {
  await stalledInCluster(t, async (A, B) => {
    const stalled = await stalledSocketIoClient(B.url, { cookie: 'sid=user-kicked' });
    await waitFor(async () => (await presence(A, 'kicked')) === 1, { timeout: 5000, message: 'the stalled socket seen cluster-wide' });
    // Fill B's kernel buffers and the socket's queue from A. (Before the engine closed full
    // sessions itself, B kept such a socket for ever and the disconnect from A, which needs a
    // free slot in its queue, did nothing.)
    await flood(A, { userId: 'kicked' }, { max: 30 });
    const kick = await A.publishApi('POST', '/users/kicked/disconnect');
    assert.equal(kick.status, 200, kick.text);
    // The kick reaches B through Redis, not before A's answer: a publish made at once may
    // overtake it (README). Once B has closed the socket, nothing more reaches it.
    await assertGone(B, stalled, 'kicked', 'socket kicked from another instance');
    const after = await A.publishApi('POST', '/publish', { userId: 'kicked', event: 'after-kick', data: 'late' });
    assert.equal(after.status, 200, after.text);
    stalled.resume();
    await stalled.closed;
    const late = stalled.messages.filter((m) => typeof m === 'string' && m.includes('after-kick'));
    assert.equal(late.length, 0, 'a message published after the kick never reaches the kicked client');
  });
});

test('self-healing: self-checks that keep failing while Redis answers rebuild the subscription connection, once per streak, logged with the reason and counted; delivery and cluster presence come back', { skip: NO_REDIS, timeout: 90_000 }, async (t) => {
  const fixture = await startFixture();
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const [A, B] = await cluster(redisPort, fixture);
  const aliceB = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const ra = recorder(aliceB);
  const rebuilds = async (s) => (await metrics(s.publishSocket)).get('sockgate_cluster_link_rebuilds_total') ?? 0;
  try {
    await crossDelivery(A, ra, 'alice', { timeout: 5000 });
    assert.equal(await rebuilds(A), 0, 'no rebuild while the checks pass');

    // Redis answers PING on every connection but holds every publish: the checks fail while
    // Redis answers, the case a rebuild is for (a real broken path heals the same way).
    const PAUSE_MS = 14_000;
    assert.equal(await redisCommand(redisPort, 'CLIENT', 'PAUSE', String(PAUSE_MS), 'WRITE'), '+OK');
    const pausedAt = Date.now();
    await waitFor(async () => (await rebuilds(A)) === 1, {
      timeout: PAUSE_MS - 1000,
      interval: 200,
      message: 'A to rebuild its subscription connection',
    });
    t.diagnostic(`fault: A rebuilt its subscription connection ${Date.now() - pausedAt} ms into the pause`);
    assert.equal((await publishApi(A.publishSocket, 'GET', '/readyz')).status, 503);
    await sleep(Math.max(0, PAUSE_MS - (Date.now() - pausedAt)));

    await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 200, {
      timeout: 15_000,
      message: '/readyz on A to be 200 again',
    });
    t.diagnostic(`fault: A ready again ${Date.now() - pausedAt - PAUSE_MS} ms after the pause ended`);
    await crossDelivery(A, ra, 'alice', { timeout: 10_000 });
    const p = await publishApi(A.publishSocket, 'GET', '/users/alice');
    assert.deepEqual([p.json.scope, p.json.sockets], ['cluster', 1], p.text);
    // Once per streak: the next rebuild would come REBUILD_EVERY (30) failures later.
    for (const s of [A, B]) {
      assert.equal(await rebuilds(s), 1, 'one rebuild per instance');
      const lines = s.proc.text().split('\n').filter((l) => l.includes('rebuilding the Redis subscription connection'));
      assert.equal(lines.length, 1, lines.join('\n'));
      assert.match(lines[0], /self-checks in a row failed .* while Redis answers/);
    }
  } finally {
    closeAll([aliceB]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

test('a burst of cross-instance publishes is delivered whole (the subscriber buffer does not overflow)', { skip: NO_REDIS, timeout: 60_000 }, async (t) => {
  const fixture = await startFixture();
  const redis = await startRedis(await freePort());
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: redis.url,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    // Without the history's Redis round trips the publisher goes as fast as it can.
    SIDECAR_HISTORY__ENABLED: 'false',
    // Room for the whole burst in the socket's own queue: what is tested is the path from
    // Redis to B, not whether this test's client reads 4000 messages as fast as they come
    // (on a busy machine it did not, and was rightly closed as a slow consumer).
    SIDECAR_REALTIME__MAX_BUFFER_SIZE: '4096',
  };
  const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
  const aliceB = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const got = [];
  aliceB.on('burst', (n) => got.push(n));
  try {
    const BATCHES = 8;
    const SIZE = 500;
    const started = Date.now();
    await Promise.all(
      Array.from({ length: BATCHES }, async (_, b) => {
        const messages = Array.from({ length: SIZE }, (_, i) => ({ userId: 'alice', event: 'burst', data: b * SIZE + i }));
        const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', { messages });
        assert.equal(r.status, 200, r.text);
      }),
    );
    await waitFor(() => got.length >= BATCHES * SIZE, { timeout: 20_000, message: `all ${BATCHES * SIZE} on B (got ${got.length})` })
      .catch((e) => {
        throw new Error(`${e.message}; B's log:\n${B.proc.text().split('\n').filter((l) => /lagged|dropped/.test(l)).slice(0, 5).join('\n')}`);
      });
    t.diagnostic(`fault: ${got.length} cross-instance messages in a burst, all delivered in ${Date.now() - started} ms`);
    assert.equal(new Set(got).size, BATCHES * SIZE, 'each once');
  } finally {
    closeAll([aliceB]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

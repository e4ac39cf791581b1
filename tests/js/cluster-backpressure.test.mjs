// Backpressure, not loss: while another instance is too far behind the relay of kept messages
// (cluster.max_lag), the publish API answers 503 + Retry-After instead of letting Redis buffer
// for that instance until it drops its connection (client-output-buffer-limit pubsub).
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/cluster-backpressure.test.mjs
// Needs redis-server on PATH. Two instances A and B on one Redis, alice on B; two publishers
// flood A (batches, each in its own order) and retry on 503 as told; B is stopped (SIGSTOP)
// for 10 s mid-flood, then resumed. Redis's pubsub output limit is lowered to 8 MB for the
// test (the default closes a subscriber at 32 MB): far less than 10 s of an unrefused flood
// (≈ 40 MB at a debug build's pace), more than cluster.max_lag (2000 here) relayed messages of
// ≈ 650 bytes with what the 200 ms reports let through beyond it. Without the backpressure every
// publish is accepted, Redis closes B's connection, and alice is told recovery_failed for what
// she lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startFixture, startSockgate, freePort, connect, closeAll, publishApi, waitFor, sleep } from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';
import { metrics } from './fault-helpers.mjs';

const SKIP = findRedisServer() ? false : 'redis-server is not on PATH';

const MAX_LAG = 2000;
const BATCH = 100;
const PAD = 'x'.repeat(500);

/** Sends one command on a fresh connection; resolves its first reply line. */
function redisOnce(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args.join(' ')} timed out`));
    }, 5000);
    sock.on('error', reject);
    sock.on('connect', () => sock.write(args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).reduce((s, a) => s + a, `*${args.length}\r\n`)));
    sock.once('data', (d) => {
      clearTimeout(timer);
      sock.end();
      resolve(d.toString().trim());
    });
  });
}

async function metric(inst, name) {
  for (const [k, v] of await metrics(inst.publishSocket)) if (k === name) return v;
  return undefined;
}

test(`cluster backpressure: B stopped 10 s mid-flood — publishes through A are refused (503 + Retry-After) past cluster.max_lag, and every accepted message reaches alice on B once, in order, none lost`, { skip: SKIP, timeout: 90_000 }, async (t) => {
  const fixture = await startFixture();
  const redis = await startRedis(await freePort());
  assert.equal(await redisOnce(redis.port, 'CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 8mb 0 0'), '+OK');
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: redis.url,
    SIDECAR_CLUSTER__MAX_LAG: String(MAX_LAG),
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    // The socket's own queue is not what is tested: large enough never to close it.
    SIDECAR_REALTIME__MAX_BUFFER_SIZE: '200000',
    SIDECAR_REALTIME__PING_INTERVAL_MS: '60000',
    SIDECAR_REALTIME__PING_TIMEOUT_MS: '30000',
  };
  const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
  const alice = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const got = [[], []];
  let warmup = false;
  const told = [];
  let disconnected = null;
  alice.on('flood', (m) => {
    if (m === -1) warmup = true;
    else got[m.p].push(m.n);
  });
  alice.on('recovery_failed', (why) => told.push(why));
  alice.on('disconnect', (reason) => (disconnected = reason));
  let stopped = false;
  try {
    await waitFor(
      async () => {
        const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'alice', event: 'flood', data: -1 });
        assert.equal(r.status, 200, r.text);
        await sleep(100);
        return warmup;
      },
      { timeout: 10_000, interval: 0, message: 'a first message from A to alice on B' },
    );

    const accepted = [0, 0];
    const refusals = [];
    let refusedWhileStopped = 0;
    let acceptedAfterResume = 0;
    let running = true;
    // Each publisher sends its numbers in order, a batch at a time, the same batch again after
    // a 503 once Retry-After has passed. Bounded by `running` (set false below) and each
    // request's timeout.
    const publisher = async (p) => {
      while (running) {
        const n0 = accepted[p];
        const messages = Array.from({ length: BATCH }, (_, i) => ({ userId: 'alice', event: 'flood', data: { p, n: n0 + i, pad: PAD } }));
        const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', { messages }, { timeout: 20_000 });
        if (r.status === 503) {
          refusals.push({ retryAfter: r.headers['retry-after'], body: r.json });
          if (stopped) refusedWhileStopped += 1;
          await sleep(Number(r.headers['retry-after']) * 1000);
          continue;
        }
        assert.equal(r.status, 200, r.text);
        accepted[p] += BATCH;
        if (resumedAt) acceptedAfterResume += BATCH;
      }
    };
    let resumedAt = 0;
    const publishers = [publisher(0), publisher(1)];
    await sleep(1500);
    process.kill(B.proc.child.pid, 'SIGSTOP');
    stopped = true;
    const acceptedAtStop = accepted[0] + accepted[1];
    await sleep(10_000);
    const acceptedWhileStopped = accepted[0] + accepted[1] - acceptedAtStop;
    process.kill(B.proc.child.pid, 'SIGCONT');
    stopped = false;
    resumedAt = Date.now();
    await sleep(4000);
    running = false;
    await Promise.all(publishers);
    const total = accepted[0] + accepted[1];

    await waitFor(() => got[0].length + got[1].length >= total || told.length > 0 || disconnected, {
      timeout: 30_000,
      interval: 50,
      message: `all ${total} messages or recovery_failed`,
    }).catch(() => {});
    await sleep(500);
    const received = got[0].length + got[1].length;
    const refusedTotal = await metric(A, 'sockgate_publishes_refused_total');
    const redisDroppedB = /Redis connection lost|re-established after it closed/.test(B.proc.text());
    t.diagnostic(
      `accepted ${total} (${acceptedWhileStopped} while B was stopped, ${acceptedAfterResume} after it resumed), ` +
        `503 ×${refusals.length} (${refusedWhileStopped} while stopped; A counted ${refusedTotal}), alice got ${received}, ` +
        `recovery_failed ×${told.length}, Redis dropped B: ${redisDroppedB}, disconnect: ${disconnected}` +
        (refusals.length ? `; a refusal: ${JSON.stringify(refusals[0].body)}` : ''),
    );
    assert.equal(disconnected, null, 'the client stays connected');
    // Exactly once, in order, per publisher; nothing lost silently.
    for (const p of [0, 1]) {
      const expected = Array.from({ length: accepted[p] }, (_, i) => i);
      if (told.length === 0) assert.deepEqual(got[p], expected, `publisher ${p}: every accepted message once, in order`);
      else {
        // Told to refetch: what did arrive is still once and in order.
        for (let i = 1; i < got[p].length; i++) assert.ok(got[p][i] > got[p][i - 1], `publisher ${p}: in order, once`);
      }
    }
    // The backpressure: refused while B was stopped, as documented, and accepted again after.
    assert.ok(refusedWhileStopped > 0, 'publishes refused while B was stopped');
    for (const r of refusals) {
      assert.equal(r.retryAfter, '1');
      assert.equal(r.body.ok, false);
      assert.equal(r.body.maxLag, MAX_LAG);
      assert.ok(r.body.lag > MAX_LAG, JSON.stringify(r.body));
      assert.match(r.body.error, /cluster\.max_lag/);
    }
    assert.ok(refusedTotal >= refusals.length, `A counted ${refusedTotal} refusals`);
    assert.ok(acceptedAfterResume > 0, 'publishes accepted again once B caught up');
    // Bounded: Redis never had to drop B, and alice lost nothing.
    assert.equal(redisDroppedB, false, 'Redis kept B connected');
    assert.equal(told.length, 0, 'nothing was lost, so nobody was told recovery_failed');
  } finally {
    if (stopped) process.kill(B.proc.child.pid, 'SIGCONT');
    closeAll([alice]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

test('cluster backpressure: an instance killed while behind holds no publish back (its Redis connection, and so its subscription, is gone)', { skip: SKIP, timeout: 60_000 }, async (t) => {
  const fixture = await startFixture();
  const redis = await startRedis(await freePort());
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: redis.url,
    SIDECAR_CLUSTER__MAX_LAG: String(MAX_LAG),
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
  };
  const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
  let stopped = false;
  try {
    // Both instances report (every 200 ms) before B stops.
    await waitFor(async () => (await redisOnce(redis.port, 'HLEN', 'sockgate:relay:readers')) === ':2', {
      timeout: 10_000,
      message: 'both instances reporting',
    });
    process.kill(B.proc.child.pid, 'SIGSTOP');
    stopped = true;
    const messages = Array.from({ length: BATCH }, (_, n) => ({ userId: 'alice', event: 'flood', data: { n, pad: PAD } }));
    // Bounded: at most 200 batches before the first refusal.
    let refused = null;
    for (let i = 0; i < 200 && !refused; i++) {
      const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', { messages });
      if (r.status === 503) refused = r;
      else assert.equal(r.status, 200, r.text);
    }
    assert.ok(refused, 'publishes refused while B is stopped and behind');
    process.kill(B.proc.child.pid, 'SIGKILL');
    stopped = false;
    const killedAt = Date.now();
    await waitFor(
      async () => (await publishApi(A.publishSocket, 'POST', '/publish/batch', { messages })).status === 200,
      { timeout: 5000, interval: 50, message: 'publishes accepted again once B is gone' },
    );
    const after = Date.now() - killedAt;
    t.diagnostic(`refused with lag ${refused.json.lag}; accepted again ${after} ms after B was killed`);
    assert.ok(after < 2000, `accepted again after ${after} ms`);
    await waitFor(async () => (await redisOnce(redis.port, 'HLEN', 'sockgate:relay:readers')) === ':1', {
      timeout: 5000,
      message: "B's report removed",
    });
  } finally {
    if (stopped) process.kill(B.proc.child.pid, 'SIGCONT');
    await Promise.all([A.stop(), B.stop().catch(() => {})]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

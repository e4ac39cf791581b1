// A receiving instance that falls behind the cross-instance stream never drops a message
// silently: each message is delivered, or the client is told `recovery_failed` (and the loss
// is counted on that instance's /metrics).
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/cluster-flood.test.mjs
// Needs redis-server on PATH. Instance B is stopped (SIGSTOP) while far more messages are
// published for its client through instance A than B's buffers between Redis and the adapter
// hold; B is resumed (SIGCONT) and reads them all at once. In the second shape nothing is
// stopped: a burst of cross-instance messages reaches B from Redis faster than B's adapter
// takes them (as from many publishing instances at once), the case where the old driver lost
// messages with only a WARN — its self-check passed, so no client was told.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startFixture, startSockgate, freePort, connect, closeAll, publishApi, waitFor, sleep } from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';
import { metrics } from './fault-helpers.mjs';

const SKIP = findRedisServer() ? false : 'redis-server is not on PATH';

/** Messages published in one batch request (publish.max_batch is 1000 by default). */
const BATCH = 1000;

/** sockgate_cluster_messages_dropped_total on `inst`, summed over causes (0 before it existed). */
async function droppedOn(inst) {
  let sum = 0;
  for (const [k, v] of await metrics(inst.publishSocket)) {
    if (k.startsWith('sockgate_cluster_messages_dropped_total')) sum += v;
  }
  return sum;
}

// Messages published while B is stopped: more than fred's broadcast channel (16 Ki) holds with
// history off; with history on (a debug build publishes about 1000/s then) more than a
// channel's stream (1024) holds.
// With `closedByRedis`, Redis closes B's subscriber connection for exceeding its pubsub
// output buffer limit: the loss happens in Redis, not in B, so B counts no drop, but the lost
// connection takes B's link down all the same.
for (const [name, TOTAL, extra, closedByRedis] of [
  ['history on', 8_000, {}],
  ['history off', 40_000, { SIDECAR_HISTORY__ENABLED: 'false' }],
  ['history off, Redis closes the connection: client-output-buffer-limit pubsub 1mb', 40_000, { SIDECAR_HISTORY__ENABLED: 'false' }, true],
]) {
  test(`cluster flood (${name}): ${TOTAL} messages for a client of a stopped instance are all delivered once it resumes, or the client is told recovery_failed and the loss is counted`, { skip: SKIP, timeout: 200_000 }, async (t) => {
    const fixture = await startFixture();
    const redis = await startRedis(await freePort());
    const env = {
      SIDECAR_CLUSTER__REDIS_URL: redis.url,
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
      // The socket's own queue is not what is tested here: large enough never to close it.
      SIDECAR_REALTIME__MAX_BUFFER_SIZE: String(2 * TOTAL),
      SIDECAR_REALTIME__PING_INTERVAL_MS: '60000',
      SIDECAR_REALTIME__PING_TIMEOUT_MS: '30000',
      ...extra,
    };
    // Without `closedByRedis`, Redis keeps whatever B has not read (its default limit closes a
    // subscriber that stays over 8 MB for 60 s): the loss tested is B's own.
    const limit = closedByRedis ? 'pubsub 1mb 0 0' : 'pubsub 0 0 0';
    const r = await redisOnce(redis.port, 'CONFIG', 'SET', 'client-output-buffer-limit', limit);
    assert.equal(r, '+OK');
    const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
    const alice = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
    const got = new Set();
    const told = [];
    let disconnected = null;
    alice.on('flood', (n) => got.add(n));
    alice.on('recovery_failed', (why) => told.push(why));
    alice.on('disconnect', (reason) => (disconnected = reason));
    let stopped = false;
    try {
      // Cross-instance delivery works before the fault.
      await waitFor(
        async () => {
          const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'alice', event: 'flood', data: -1 });
          assert.equal(r.status, 200, r.text);
          await sleep(100);
          return got.has(-1);
        },
        { timeout: 10_000, interval: 0, message: 'a first message from A to alice on B' },
      );
      got.delete(-1);

      process.kill(B.proc.child.pid, 'SIGSTOP');
      stopped = true;
      const started = Date.now();
      // Bounded in count (TOTAL / BATCH batches) and in time (each request's own timeout).
      // Four requests at a time: a debug build on a busy machine waits on Redis for each
      // message in turn. B must be resumed before alice's client gives up on its pings (ping
      // interval + timeout: 90 s here). The order across batches is not tested.
      let next = 0;
      const publisher = async () => {
        for (let b = next++; b < TOTAL / BATCH; b = next++) {
          const messages = Array.from({ length: BATCH }, (_, i) => ({ userId: 'alice', event: 'flood', data: b * BATCH + i }));
          const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', { messages }, { timeout: 20_000 });
          assert.equal(r.status, 200, r.text);
          assert.ok(Date.now() - started < 80_000, `publishing took over 80 s (${b + 1} batches)`);
        }
      };
      await Promise.all([publisher(), publisher(), publisher(), publisher()]);
      const publishMs = Date.now() - started;
      process.kill(B.proc.child.pid, 'SIGCONT');
      stopped = false;

      // Everything arrives, or the client is told; then wait for B to settle (its link up again,
      // so a recovery_failed due after a restoration has been sent).
      await waitFor(() => got.size === TOTAL || told.length > 0 || disconnected, {
        timeout: 30_000,
        interval: 50,
        message: `all ${TOTAL} messages or recovery_failed (got ${got.size})`,
      }).catch(() => {});
      await waitFor(async () => (await publishApi(B.publishSocket, 'GET', '/readyz')).status === 200, {
        timeout: 20_000,
        message: '/readyz on B to be 200 again',
      });
      let last = -1;
      await waitFor(
        async () => {
          await sleep(500);
          const settled = got.size === last;
          last = got.size;
          return settled;
        },
        { timeout: 20_000, interval: 0, message: 'deliveries to alice to stop' },
      );
      const dropped = await droppedOn(B);
      const missing = TOTAL - got.size;
      const lossLines = B.proc
        .text()
        .split('\n')
        .filter((l) => /lagged|dropped|cross-instance messages/.test(l));
      t.diagnostic(
        `fault: ${TOTAL} messages published in ${publishMs} ms while B was stopped; alice got ${got.size} ` +
          `(${missing} missing), recovery_failed ×${told.length}, disconnect: ${disconnected}, B counted ${dropped} dropped; ` +
          `B's loss log lines: ${lossLines.length}${lossLines.length ? `, first: ${lossLines[0].slice(0, 300)}` : ''}`,
      );
      assert.equal(disconnected, null, 'the client stays connected');
      if (closedByRedis) {
        assert.ok(missing > 0, 'Redis closed the connection: messages are missing');
        assert.ok(told.length > 0, `${missing} messages missing and the client was not told recovery_failed`);
        assert.match(B.proc.text(), /Redis connection lost|Redis subscriber connection re-established after it closed/);
      } else if (missing > 0) {
        assert.ok(told.length > 0, `${missing} messages missing and the client was not told recovery_failed`);
        assert.ok(dropped > 0, `${missing} messages missing and B counted no drop`);
      } else {
        assert.equal(dropped, 0, 'nothing missing, nothing counted as dropped');
      }
      // One log line per loss episode, not one per message.
      assert.ok(lossLines.length <= 20, `${lossLines.length} loss log lines`);
    } finally {
      if (stopped) process.kill(B.proc.child.pid, 'SIGCONT');
      closeAll([alice]);
      await Promise.all([A.stop(), B.stop()]);
      await fixture.stop();
      await redis.kill('SIGKILL').catch(() => {});
    }
  });
}

/** Encodes one Redis command (RESP). */
function resp(...args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/**
 * SSUBSCRIBEs to `channel` on a raw connection, runs `trigger()`, and resolves the payload of
 * the first message on it that contains `marker` (bounded by `timeout`).
 */
function capture(port, channel, marker, trigger, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let buf = Buffer.alloc(0);
    let subscribed = false;
    const timer = setTimeout(() => done(new Error(`no message with ${marker} on ${channel}`)), timeout);
    function done(err, value) {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    }
    sock.on('error', (e) => done(e));
    sock.on('connect', () => sock.write(resp('SSUBSCRIBE', channel)));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!subscribed && buf.includes('ssubscribe')) {
        subscribed = true;
        buf = Buffer.alloc(0);
        trigger().catch((e) => done(e));
        return;
      }
      const at = buf.indexOf(marker);
      if (at < 0) return;
      // The payload is the last bulk string of the push frame: `$<len>\r\n<payload>\r\n`.
      const header = buf.lastIndexOf('$', at);
      const crlf = buf.indexOf('\r\n', header);
      const len = Number(buf.subarray(header + 1, crlf).toString());
      const start = crlf + 2;
      if (buf.length < start + len) return;
      done(null, Buffer.from(buf.subarray(start, start + len)));
    });
  });
}

/** Sends one command on a fresh connection; resolves its first reply line. */
function redisOnce(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args.join(' ')} timed out`));
    }, 5000);
    sock.on('error', reject);
    sock.on('connect', () => sock.write(resp(...args)));
    sock.once('data', (d) => {
      clearTimeout(timer);
      sock.end();
      resolve(d.toString().trim());
    });
  });
}

/** Sends `commands` (RESP buffers) pipelined on one connection; resolves once all were answered. */
function pipeline(port, commands, timeout = 30_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let answered = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`${answered}/${commands.length} pipelined commands answered`));
    }, timeout);
    sock.on('error', reject);
    sock.on('connect', () => sock.write(Buffer.concat(commands)));
    sock.on('data', (d) => {
      // Integer replies only (SPUBLISH): one `:n\r\n` each.
      for (const c of d) if (c === 0x3a) answered += 1;
      if (answered >= commands.length) {
        clearTimeout(timer);
        sock.end();
        resolve();
      }
    });
  });
}

// Bursts: 10 000 is more than a channel's stream holds (socketioxide-redis's stream_buffer,
// 1024) and fewer than fred's broadcast channel (16 Ki): the old driver lost about 2000 at its
// full stream with only a WARN each while its self-check passed (no client told); 40 000 is
// more than the broadcast channel holds too.
for (const BURST of [10_000, 40_000]) test(`cluster burst: ${BURST} cross-instance messages reaching a running instance at once from Redis are all delivered, or its client is told recovery_failed and the loss is counted`, { skip: SKIP, timeout: 120_000 }, async (t) => {
  const fixture = await startFixture();
  const redis = await startRedis(await freePort());
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: redis.url,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    SIDECAR_REALTIME__MAX_BUFFER_SIZE: String(2 * BURST),
    SIDECAR_HISTORY__ENABLED: 'false',
  };
  const [A, B] = await Promise.all([0, 1].map(() => startSockgate({ upstreamUrl: fixture.url, env })));
  const alice = await connect(B.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const got = new Set();
  const told = [];
  let disconnected = null;
  alice.on('flood', (n) => got.add(n));
  alice.on('recovery_failed', (why) => told.push(why));
  alice.on('disconnect', (reason) => (disconnected = reason));
  try {
    // One real broadcast from A, as it travels through Redis (socketioxide-redis's request
    // channel of the `/` namespace); the burst is copies of it, each with its own number.
    const WIDTH = 8;
    const marker = `n${'0'.repeat(WIDTH)}`;
    const template = await capture(redis.port, 'socket.io-request#/#', marker, async () => {
      const r = await publishApi(A.publishSocket, 'POST', '/publish', { userId: 'alice', event: 'flood', data: marker });
      assert.equal(r.status, 200, r.text);
    });
    await waitFor(() => got.has(marker), { timeout: 5000, message: 'the template message on B' });
    got.delete(marker);
    const at = template.indexOf(marker);
    const commands = Array.from({ length: BURST }, (_, i) => {
      const payload = Buffer.from(template);
      payload.write(`n${String(i).padStart(WIDTH, '0')}`, at, 'latin1');
      return resp('SPUBLISH', 'socket.io-request#/#', payload);
    });
    const started = Date.now();
    await pipeline(redis.port, commands);
    const publishMs = Date.now() - started;

    await waitFor(() => got.size === BURST || told.length > 0 || disconnected, {
      timeout: 30_000,
      interval: 50,
      message: `all ${BURST} messages or recovery_failed (got ${got.size})`,
    }).catch(() => {});
    await waitFor(async () => (await publishApi(B.publishSocket, 'GET', '/readyz')).status === 200, {
      timeout: 20_000,
      message: '/readyz on B to be 200 again',
    });
    let last = -1;
    await waitFor(
      async () => {
        await sleep(500);
        const settled = got.size === last && (told.length > 0 || got.size === BURST || Date.now() - started > 10_000);
        last = got.size;
        return settled;
      },
      { timeout: 30_000, interval: 0, message: 'deliveries to alice to stop' },
    );
    const dropped = await droppedOn(B);
    const missing = BURST - got.size;
    const lossLines = B.proc
      .text()
      .split('\n')
      .filter((l) => /lagged|dropped/.test(l));
    t.diagnostic(
      `fault: ${BURST} messages pipelined into Redis in ${publishMs} ms; alice on B got ${got.size} ` +
        `(${missing} missing), recovery_failed ×${told.length}, disconnect: ${disconnected}, B counted ${dropped} dropped; ` +
        `B's loss log lines: ${lossLines.length}${lossLines.length ? `, first: ${lossLines[0].slice(0, 300)}` : ''}`,
    );
    assert.equal(disconnected, null, 'the client stays connected');
    if (missing > 0) {
      assert.ok(told.length > 0, `${missing} messages missing and the client was not told recovery_failed`);
      assert.ok(dropped > 0, `${missing} messages missing and B counted no drop`);
    } else {
      assert.equal(dropped, 0, 'nothing missing, nothing counted as dropped');
    }
    assert.ok(lossLines.length <= 20, `${lossLines.length} loss log lines`);
  } finally {
    closeAll([alice]);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

// Recovery under races and timing: every promise of "Never miss a notification" holds when a
// room expires, when the history is longer than `max_messages`, when a Redis stream expires or
// Redis loses its data, and when a socket goes away while its replay waits. A client that
// cannot be given everything it missed gets `recovery_failed` — never a silent gap.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import {
  startFixture, startSockgate, client, nextEvent, recorder, waitFor, freePort, sleep, publishOk, publishApi,
  recoveringClient, connected,
} from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';

const haveRedis = !!findRedisServer();
const noRedis = !haveRedis && 'redis-server not installed';

async function gone(sg, userId) {
  await waitFor(async () => (await publishApi(sg.publishSocket, 'GET', `/users/${userId}`)).json?.sockets === 0, {
    message: `sockgate saw ${userId} leave`,
  });
}

const WS = { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' };

async function memoryStack(env) {
  const fixture = await startFixture();
  after(() => fixture.stop());
  const sg = await startSockgate({ upstreamUrl: fixture.url, env: { ...WS, ...env } });
  after(() => sg.stop());
  return sg;
}

async function clusterStack(env, instances = 1) {
  const redis = await startRedis(await freePort());
  after(() => redis.kill());
  const fixture = await startFixture();
  after(() => fixture.stop());
  const all = { ...WS, SIDECAR_CLUSTER__REDIS_URL: redis.url, ...env };
  const sgs = [];
  for (let i = 0; i < instances; i++) sgs.push(await startSockgate({ upstreamUrl: fixture.url, env: all }));
  after(() => Promise.all(sgs.map((s) => s.stop())));
  return { redis, fixture, sgs, env: all };
}

/** After a reconnect: either everything in `expected`, in order, or recovery_failed and no partial replay. */
function assertWholeOrFailed(rec, before, expected, message) {
  const after = rec.events.slice(before);
  const failed = after.some((e) => e.event === 'recovery_failed');
  const got = after.filter((e) => e.event === 'notification').map((e) => e.args[0]);
  if (failed) assert.deepEqual(got, [], `${message}: nothing partial is replayed with recovery_failed`);
  else assert.deepEqual(got, expected, `${message}: every missed message, once, in order (got ${JSON.stringify(got)})`);
  return failed;
}

test('memory: an offset from before a room expired is never taken for a new one', async () => {
  const sg = await memoryStack({ SIDECAR_HISTORY__MAX_AGE_MS: '1500' });
  const { socket, state } = recoveringClient(sg.url, 'sid=user-exp');
  const rec = recorder(socket);
  await connected(socket);
  for (let n = 1; n <= 5; n++) await publishOk(sg.publishSocket, { userId: 'exp', data: n });
  await rec.waitCount(5);
  const seen = state.lastOffset;
  socket.disconnect();
  await gone(sg, 'exp');
  await sleep(2000); // the room expires
  for (let n = 6; n <= 12; n++) await publishOk(sg.publishSocket, { userId: 'exp', data: n });
  const before = rec.events.length;
  await connected(socket);
  await sleep(500);
  assertWholeOrFailed(rec, before, [6, 7, 8, 9, 10, 11, 12], 'reconnect after the room expired');
  assert.ok(rec.metas.slice(before).every((m) => !m || m.offset !== seen), 'no offset is issued twice');
});

test('cluster: a client far behind gets everything the stream keeps, or recovery_failed — never part', { skip: noRedis }, async () => {
  const { sgs: [sg] } = await clusterStack({ SIDECAR_HISTORY__MAX_MESSAGES: '5' });
  const { socket } = recoveringClient(sg.url, 'sid=user-far');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'far', data: 0 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'far');
  const missed = Array.from({ length: 60 }, (_, i) => i + 1);
  for (const n of missed) await publishOk(sg.publishSocket, { userId: 'far', data: n });
  const before = rec.events.length;
  await connected(socket);
  await sleep(800);
  await publishOk(sg.publishSocket, { userId: 'far', data: 61 });
  await rec.waitFor((e) => e.event === 'notification' && e.args[0] === 61, 'the live message');
  const failed = assertWholeOrFailed(
    { events: rec.events.filter((e) => e.args[0] !== 61) }, before, missed, 'replay 60 behind',
  );
  assert.ok(!failed, 'the stream (MAXLEN ~ keeps whole nodes) still had all 60: they are replayed');
});

/** `redis-cli` against the test's own Redis, one reply per line (`--raw`). */
function redisCli(redis, ...args) {
  return execFileSync('redis-cli', ['-p', String(redis.port), '--raw', ...args], { encoding: 'utf8' }).trim().split('\n');
}

/** Connects a new recovering socket of `cookie` reporting `offset`; resolves with its recorder once it settled. */
async function reconnectFrom(url, cookie, offset) {
  const { socket, state } = recoveringClient(url, cookie);
  state.lastOffset = offset;
  const rec = recorder(socket);
  await connected(socket);
  return { socket, rec };
}

test('cluster: at the trim edge the replay is whole when continuous and recovery_failed when not (300 behind, max_messages 5)', { skip: noRedis }, async () => {
  const { redis, sgs: [sg] } = await clusterStack({ SIDECAR_HISTORY__MAX_MESSAGES: '5' });
  // Stays connected: learns every offset, trimmed or not.
  const { socket: listener } = recoveringClient(sg.url, 'sid=user-edge');
  const all = recorder(listener);
  await connected(listener);
  const TOTAL = 300;
  for (let n = 1; n <= TOTAL; n++) await publishOk(sg.publishSocket, { userId: 'edge', data: n });
  await all.waitCount(TOTAL, `${TOTAL} live messages`, 10_000);
  const offsets = all.metas.map((m) => m.offset);
  const ids = offsets.map((o) => o.slice(o.indexOf(':') + 1));
  const key = 'sockgate:history:{user:edge}';
  const oldestKept = ids.indexOf(redisCli(redis, 'XRANGE', key, '-', '+', 'COUNT', '1')[0]);
  assert.ok(oldestKept > 2, `the stream was trimmed (oldest kept: message ${oldestKept + 1} of ${TOTAL})`);
  const messages = (from) => Array.from({ length: TOTAL - from }, (_, i) => from + i + 1);

  // The offset of the last trimmed entry: nothing after it is gone.
  const justBefore = await reconnectFrom(sg.url, 'sid=user-edge', offsets[oldestKept - 1]);
  // The offset of the oldest kept entry.
  const at = await reconnectFrom(sg.url, 'sid=user-edge', offsets[oldestKept]);
  // One further back: the entry after it was trimmed.
  const behind = await reconnectFrom(sg.url, 'sid=user-edge', offsets[oldestKept - 2]);
  // Far behind: the first message's offset.
  const far = await reconnectFrom(sg.url, 'sid=user-edge', offsets[0]);
  await publishOk(sg.publishSocket, { userId: 'edge', data: TOTAL + 1 });
  for (const { rec } of [justBefore, at, behind, far]) {
    // Four replays of up to 300 messages run first: generous under a loaded CI.
    await rec.waitFor((e) => e.args[0] === TOTAL + 1, 'the live message after the replay', 20_000);
  }
  const replayed = ({ rec }) => ({ events: rec.events.filter((e) => e.args[0] !== TOTAL + 1) });
  assert.ok(!assertWholeOrFailed(replayed(justBefore), 0, messages(oldestKept), 'offset of the last trimmed entry'), 'continuous: replayed');
  assert.ok(!assertWholeOrFailed(replayed(at), 0, messages(oldestKept + 1), 'offset of the oldest kept entry'), 'continuous: replayed');
  assert.ok(assertWholeOrFailed(replayed(behind), 0, [], 'offset before the last trimmed entry'), 'a trimmed message: recovery_failed');
  assert.ok(assertWholeOrFailed(replayed(far), 0, [], `${TOTAL} behind`), 'far behind: recovery_failed');
});

test('cluster: a stream that expired and was recreated is a gap, not a short replay', { skip: noRedis }, async () => {
  const { sgs: [sg] } = await clusterStack({ SIDECAR_HISTORY__MAX_AGE_MS: '1000' });
  const { socket } = recoveringClient(sg.url, 'sid=user-sx');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'sx', data: 1 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'sx');
  await publishOk(sg.publishSocket, { userId: 'sx', data: 2 }); // missed
  await sleep(2500); // the stream expires with message 2 in it
  await publishOk(sg.publishSocket, { userId: 'sx', data: 3 });
  const before = rec.events.length;
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed', 5000);
  assertWholeOrFailed(rec, before, [2, 3], 'reconnect across an expired stream');
});

test('cluster: Redis restarted empty — recovery across the outage fails loudly', { skip: noRedis }, async () => {
  const { redis, fixture, sgs: [sg] } = await clusterStack({});
  const { socket } = recoveringClient(sg.url, 'sid=user-rr');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'rr', data: 1 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'rr');
  await redis.kill('SIGKILL');
  await publishOk(sg.publishSocket, { userId: 'rr', data: 2 }); // during the outage: not kept
  const again = await startRedis(redis.port); // empty: --save '' --appendonly no
  after(() => again.kill());
  await waitFor(async () => (await publishApi(sg.publishSocket, 'GET', '/stats')).json?.scope === 'cluster', {
    message: 'sockgate back on Redis', timeout: 15_000,
  });
  await publishOk(sg.publishSocket, { userId: 'rr', data: 3 });
  const before = rec.events.length;
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed', 5000);
  assertWholeOrFailed(rec, before, [2, 3], 'reconnect across a Redis restart');
  void fixture;
});

test('cluster: a message that could not be kept (Redis stalled) makes recovery across it fail', { skip: noRedis }, async () => {
  const { redis, sgs: [sg] } = await clusterStack({});
  const { socket } = recoveringClient(sg.url, 'sid=user-st');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'st', data: 1 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'st');
  process.kill(redis.pid, 'SIGSTOP');
  try {
    // Not kept: XADD times out. The publish itself still answers (live delivery only).
    await publishApi(sg.publishSocket, 'POST', '/publish', { userId: 'st', data: 2 }, { timeout: 15_000 });
  } finally {
    process.kill(redis.pid, 'SIGCONT');
  }
  await waitFor(async () => (await publishApi(sg.publishSocket, 'GET', '/stats')).json?.scope === 'cluster', {
    message: 'sockgate back on Redis', timeout: 15_000,
  });
  await publishOk(sg.publishSocket, { userId: 'st', data: 3 });
  const before = rec.events.length;
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed', 5000);
  assertWholeOrFailed(rec, before, [2, 3], 'reconnect across a message that was not kept');
});

test('cluster: Redis forgetting its scripts (SCRIPT FLUSH, as after a restart or failover) loses nothing: they are loaded again', { skip: noRedis }, async () => {
  const { redis, sgs: [sg] } = await clusterStack({});
  const { socket, state } = recoveringClient(sg.url, 'sid=user-flushed');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'flushed', data: 1 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'flushed');
  assert.deepEqual(redisCli(redis, 'SCRIPT', 'FLUSH'), ['OK']);
  // The append script is unknown to Redis now: kept all the same, so a replay gets it.
  await publishOk(sg.publishSocket, { userId: 'flushed', data: 2 });
  assert.equal(redisCli(redis, 'XLEN', 'sockgate:history:{user:flushed}')[0], '2', 'both messages kept');
  redisCli(redis, 'SCRIPT', 'FLUSH');
  const before = rec.events.length;
  await connected(socket); // the replay script is unknown too
  await rec.waitFor((e) => e.args[0] === 2, 'the missed message, replayed', 5000);
  assertWholeOrFailed(rec, before, [2], 'reconnect after SCRIPT FLUSH');
  assert.ok(state.lastOffset, 'with its offset');
});

test('cluster: after an upgrade from time-based stream ids, an offset from before gets recovery_failed once; the room then counts its messages', { skip: noRedis }, async () => {
  const { redis, sgs: [sg] } = await clusterStack({});
  // The room as an older sockgate left it: its generation as a string, ids `<ms>-<seq>`, each
  // entry naming the one before it.
  const key = 'sockgate:history:{user:up}';
  redisCli(redis, 'SET', `${key}:epoch`, '0123456789abcdef');
  redisCli(redis, 'XADD', key, '1733560000000-0', 'p', '', 'e', 'notification', 'd', '1');
  redisCli(redis, 'XADD', key, '1733560000001-0', 'p', '1733560000000-0', 'e', 'notification', 'd', '2');
  const { socket, state } = recoveringClient(sg.url, 'sid=user-up');
  state.lastOffset = '0123456789abcdef:1733560000000-0';
  const rec = recorder(socket);
  await connected(socket);
  await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed for the old offset', 5000);
  assert.deepEqual(rec.of('notification'), [], 'nothing replayed across the upgrade');
  await publishOk(sg.publishSocket, { userId: 'up', data: 3 });
  await rec.waitFor((e) => e.args[0] === 3, 'the first message after the upgrade', 5000);
  const first = state.lastOffset;
  assert.match(first, /^[0-9a-f]+:1-0$/, 'a new generation, counted from 1');
  assert.notEqual(first.split(':')[0], '0123456789abcdef');
  assert.deepEqual(redisCli(redis, 'XLEN', key), ['1'], 'the older entries are gone with their generation');
  socket.disconnect();
  await gone(sg, 'up');
  for (const n of [4, 5]) await publishOk(sg.publishSocket, { userId: 'up', data: n });
  const before = rec.events.length;
  await connected(socket);
  await rec.waitFor((e) => e.args[0] === 5, 'the missed messages', 5000);
  await sleep(200);
  assert.ok(!assertWholeOrFailed(rec, before, [4, 5], 'reconnect after the upgrade'), 'replayed, no recovery_failed');
  assert.equal(state.lastOffset, `${first.split(':')[0]}:3-0`);
  socket.disconnect();
});

test('a replay longer than the socket queue waits for room: every message arrives, the socket stays', async () => {
  const sg = await memoryStack({ SIDECAR_HISTORY__MAX_MESSAGES: '1000', SIDECAR_REALTIME__MAX_BUFFER_SIZE: '8' });
  const { socket } = recoveringClient(sg.url, 'sid=user-long');
  const rec = recorder(socket);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'long', data: 0 });
  await rec.waitCount(1);
  socket.disconnect();
  await gone(sg, 'long');
  const MISSED = 500;
  for (let n = 1; n <= MISSED; n++) await publishOk(sg.publishSocket, { userId: 'long', data: n });
  const before = rec.events.length;
  let dropped = 0;
  socket.on('disconnect', () => dropped++);
  await connected(socket);
  await publishOk(sg.publishSocket, { userId: 'long', data: MISSED + 1 });
  await rec.waitFor((e) => e.args[0] === MISSED + 1, 'the live message after the replay', 10_000);
  const got = rec.events.slice(before).map((e) => e.args[0]);
  assert.deepEqual(got, Array.from({ length: MISSED + 1 }, (_, i) => i + 1), `${MISSED} replayed through a queue of 8, then live`);
  assert.equal(dropped, 0, 'not closed as a slow consumer');
  assert.doesNotMatch(sg.proc.text(), /slow consumer/);
});

/**
 * A socket whose client sent CONNECT and then stopped reading, with `count` × `size` bytes
 * published to it: sockgate's writer to it is stuck on a full TCP window.
 */
async function stuckReader(sg, userId, { count = 100, size = 512 * 1024 } = {}) {
  const { WebSocket } = await import('./fault-helpers.mjs');
  const ws = new WebSocket(`${sg.url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, {
    headers: { cookie: `sid=user-${userId}` },
  });
  ws.on('error', () => {});
  const connectedNs = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0')) ws.send('40');
      if (text.startsWith('40')) resolve();
    });
    ws.on('close', () => reject(new Error('closed before CONNECT')));
  });
  await connectedNs;
  ws._socket.pause(); // stop reading: the kernel buffers fill, then sockgate's writes block
  const blob = 'x'.repeat(size);
  for (let i = 0; i < count; i++) {
    await publishApi(sg.publishSocket, 'POST', '/publish', { userId, data: { i, blob } }, { timeout: 10_000 });
  }
  return ws;
}

// A drain deadline shorter than engineioxide's CLOSE_GRACE (1 s, how long a closing socket's
// writer may still try to write): closing the stuck socket alone takes that long, so exiting
// within deadline + BOUND < CLOSE_GRACE shows the deadline cut it rather than waited for it.
const DRAIN_MS = 300;
const BOUND_MS = 600;
const DRAIN = { SIDECAR_SERVER__DRAIN_TIMEOUT_MS: String(DRAIN_MS), SIDECAR_PUBLISH__MAX_BODY_BYTES: String(1024 * 1024) };

test('drain: a client that stops reading does not hold shutdown past the deadline', async () => {
  const sg = await memoryStack(DRAIN);
  const ws = await stuckReader(sg, 'stuck');
  const started = Date.now();
  sg.proc.child.kill('SIGTERM');
  const { code } = await sg.proc.waitExit(5000);
  const took = Date.now() - started;
  ws.terminate();
  assert.ok(took < DRAIN_MS + BOUND_MS, `exited ${took} ms after SIGTERM (drain_timeout_ms ${DRAIN_MS}, bound ${BOUND_MS})`);
  assert.equal(code, 0);
});

test('drain: a second SIGTERM stops at once, stuck writers or not', async () => {
  const sg = await memoryStack({ ...DRAIN, SIDECAR_SERVER__DRAIN_TIMEOUT_MS: '30000' });
  const ws = await stuckReader(sg, 'stuck2');
  sg.proc.child.kill('SIGTERM');
  await sleep(100);
  const started = Date.now();
  sg.proc.child.kill('SIGTERM');
  await sg.proc.waitExit(5000);
  const took = Date.now() - started;
  ws.terminate();
  assert.ok(took < BOUND_MS, `exited ${took} ms after the second SIGTERM (bound ${BOUND_MS})`);
});

test('config: a warning about a setting is in sockgate\'s output', async () => {
  const sg = await memoryStack({ SIDECAR_UPSTREAM__POOL_IDLE_TIMEOUT_MS: '6000' });
  await waitFor(() => sg.proc.text().includes('sockgate ready'), { message: 'ready line' });
  assert.match(sg.proc.text(), /WARN.*upstream\.pool_idle_timeout_ms = 6000 is not below/);
});

/** Whether offset `a` comes after `b` (as in clients/react/src/offsets.ts). */
function isNewerOffset(a, b) {
  if (!b) return true;
  const parse = (o) => {
    const colon = o.indexOf(':');
    if (colon >= 0) return [o.slice(0, colon), o.slice(colon + 1).split('-').map(Number)];
    const dash = o.indexOf('-');
    return [o.slice(0, dash), [Number(o.slice(dash + 1))]];
  };
  const [ra, na] = parse(a);
  const [rb, nb] = parse(b);
  if (ra !== rb) return true;
  for (let i = 0; i < Math.max(na.length, nb.length); i++) {
    if ((na[i] ?? 0) !== (nb[i] ?? 0)) return (na[i] ?? 0) > (nb[i] ?? 0);
  }
  return false;
}

test('cluster: reconnecting through B while A and C publish — every message exactly once, in stream order, for a steady and a reconnecting socket', { skip: noRedis, timeout: 120_000 }, async () => {
  // The stream keeps all 3,000 messages: a reconnect slowed by a busy machine must not fall
  // past the trim (a legitimate recovery_failed, tested elsewhere) — this test is about order
  // and exactly once.
  const { sgs: [a, b, c] } = await clusterStack({ SIDECAR_HISTORY__MAX_MESSAGES: '4000' }, 3);
  await waitFor(() => /every instance relays kept messages.*instances=3/.test(a.proc.text() + c.proc.text()), {
    message: 'the publishers see every instance relay', timeout: 5000,
  });
  const PER_PUBLISHER = 1500;
  const RECONNECTS = 120;
  // No de-duplication on the client: whatever sockgate sends is counted as it comes.
  const watch = (socket, state) => {
    const log = { got: [], offsets: [], failures: 0 };
    socket.offAny();
    socket.onAny((event, data, meta) => {
      if (event === 'recovery_failed') return void log.failures++;
      if (state) state.lastOffset = meta.offset;
      log.offsets.push(meta.offset);
      log.got.push(data.m);
    });
    return log;
  };
  const steady = recoveringClient(b.url, 'sid=user-xi');
  const steadyLog = watch(steady.socket);
  await connected(steady.socket);
  const moving = recoveringClient(b.url, 'sid=user-xi');
  const movingLog = watch(moving.socket, moving.state);
  await connected(moving.socket);
  let running = 2;
  const publisher = (sg, tag) => (async () => {
    for (let n = 1; n <= PER_PUBLISHER; n++) await publishOk(sg.publishSocket, { userId: 'xi', data: { m: `${tag}${n}` } });
    running--;
  })();
  const publishing = [publisher(a, 'a'), publisher(c, 'c')];
  let reconnects = 0;
  for (; reconnects < RECONNECTS && running > 0; reconnects++) {
    await sleep(20 + Math.floor(Math.random() * 30));
    moving.socket.disconnect();
    await connected(moving.socket);
  }
  await Promise.all(publishing);
  const last = [`a${PER_PUBLISHER}`, `c${PER_PUBLISHER}`];
  for (const log of [steadyLog, movingLog]) {
    await waitFor(() => last.every((m) => log.got.includes(m)), { message: `the last messages (got ${log.got.length})`, timeout: 15_000 });
  }
  await sleep(300);
  const everything = ['a', 'c'].flatMap((t) => Array.from({ length: PER_PUBLISHER }, (_, i) => `${t}${i + 1}`));
  for (const [name, log] of [['steady', steadyLog], ['reconnecting', movingLog]]) {
    assert.equal(log.failures, 0, `${name}: no recovery_failed without a fault`);
    const repeats = log.got.length - new Set(log.got).size;
    assert.equal(repeats, 0, `${name}: no message twice (${repeats} repeats over ${reconnects} reconnects)`);
    assert.deepEqual([...log.got].sort(), [...everything].sort(), `${name}: every message`);
    const outOfOrder = log.offsets.findIndex((o, i) => i > 0 && !isNewerOffset(o, log.offsets[i - 1]));
    assert.equal(outOfOrder, -1, `${name}: offsets in stream order (first break at #${outOfOrder}: ${log.offsets[outOfOrder - 1]} then ${log.offsets[outOfOrder]})`);
    for (const t of ['a', 'c']) {
      const own = log.got.filter((m) => m.startsWith(t)).map((m) => Number(m.slice(1)));
      assert.ok(own.every((n, i) => i === 0 || n > own[i - 1]), `${name}: ${t}'s messages in the order ${t} published them`);
    }
  }
  assert.ok(reconnects >= 20, `the race was exercised (${reconnects} reconnects)`);
});

test('cluster: a fresh client whose head cannot be read is told to refetch, not given old messages', { skip: noRedis }, async () => {
  const redis = await startRedis(await freePort());
  after(() => redis.kill());
  const fixture = await startFixture();
  after(() => fixture.stop());
  const proxy = await headReadBlackhole(redis.port);
  const sg = await startSockgate({ upstreamUrl: fixture.url, env: { ...WS, SIDECAR_CLUSTER__REDIS_URL: proxy.url } });
  after(() => sg.stop());
  for (let n = 1; n <= 3; n++) await publishOk(sg.publishSocket, { userId: 'hd', data: n }); // before the client
  const { socket } = recoveringClient(sg.url, 'sid=user-hd');
  const rec = recorder(socket);
  proxy.arm(); // the head read at the handshake gets no answer; everything else does
  await connected(socket);
  await waitFor(() => rec.events.some((e) => e.event === 'recovery_failed'), {
    timeout: 8000,
    message: 'recovery_failed: the client refetches',
  });
  assert.ok(proxy.swallowed() > 0, 'the head read was the one left unanswered');
  assert.deepEqual(rec.of('notification'), [], 'messages from before the handshake are not replayed');
});

test('cluster: a fresh client without offsets whose head cannot be read starts live: no old messages, no recovery_failed', { skip: noRedis }, async () => {
  const redis = await startRedis(await freePort());
  after(() => redis.kill());
  const fixture = await startFixture();
  after(() => fixture.stop());
  const proxy = await headReadBlackhole(redis.port);
  const sg = await startSockgate({ upstreamUrl: fixture.url, env: { ...WS, SIDECAR_CLUSTER__REDIS_URL: proxy.url } });
  after(() => sg.stop());
  for (let n = 1; n <= 3; n++) await publishOk(sg.publishSocket, { userId: 'hdp', data: n }); // before the client
  const socket = client(sg.url, { cookie: 'sid=user-hdp', transports: ['websocket'], autoConnect: false });
  const rec = recorder(socket);
  proxy.arm();
  await connected(socket); // CONNECT comes once the head read gave up
  assert.ok(proxy.swallowed() > 0, 'the head read was the one left unanswered');
  await sleep(200);
  await publishOk(sg.publishSocket, { userId: 'hdp', data: 4 });
  await rec.waitFor((e) => e.args[0] === 4, 'the live message', 5000);
  await sleep(200);
  assert.deepEqual(rec.events, [{ event: 'notification', args: [4] }], 'live messages only');
});

/**
 * A TCP proxy to Redis that, once armed, never answers a connection that asked for a
 * history head (the head script, told apart from the append script, which reads the newest
 * entry too, by its `#newest == 0`): Redis replies in order, so that connection's later
 * replies are held back too, until the client gives up on it.
 */
async function headReadBlackhole(redisPort) {
  const net = await import('node:net');
  const port = await freePort();
  let armed = false;
  let swallowed = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: redisPort, host: '127.0.0.1' });
    let mute = false;
    client.on('data', (d) => {
      if (armed && /#newest == 0/.test(d.toString('latin1'))) mute = true;
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (mute) swallowed += 1;
      else if (client.writable) client.write(d);
    });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  after(() => server.close());
  return { url: `redis://127.0.0.1:${port}`, arm: () => { armed = true; }, swallowed: () => swallowed };
}

/**
 * A TCP proxy to Redis that holds back replies by `delayMs` on every connection except the
 * subscriber one (recognised by its SUBSCRIBE): an instance behind it reads streams slowly
 * while it gets published messages at once — the reconnect race, made wide.
 */
async function slowCommandsProxy(redisPort, delayMs) {
  const net = await import('node:net');
  const port = await freePort();
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: redisPort, host: '127.0.0.1' });
    let fast = false;
    let last = 0;
    client.on('data', (d) => {
      if (/subscribe/i.test(d.toString('latin1'))) fast = true;
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      const at = Math.max(Date.now() + (fast ? 0 : delayMs), last);
      last = at;
      setTimeout(() => client.writable && client.write(d), at - Date.now());
    });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  after(() => server.close());
  return `redis://127.0.0.1:${port}`;
}

test('cluster: a message published through A while B reads the stream for a reconnect is not missed', { skip: noRedis }, async () => {
  const redis = await startRedis(await freePort());
  after(() => redis.kill());
  const fixture = await startFixture();
  after(() => fixture.stop());
  const env = { ...WS, SIDECAR_CLUSTER__REDIS_URL: redis.url };
  const a = await startSockgate({ upstreamUrl: fixture.url, env });
  const b = await startSockgate({
    upstreamUrl: fixture.url,
    env: { ...env, SIDECAR_CLUSTER__REDIS_URL: await slowCommandsProxy(redis.port, Number(process.env.PROXY_DELAY ?? 300)) },
  });
  after(() => Promise.all([a.stop(), b.stop()]));
  const { socket, state } = recoveringClient(b.url, 'sid=user-win');
  const got = [];
  socket.offAny();
  socket.onAny((event, data, meta) => {
    if (event === 'recovery_failed') return void got.push('recovery_failed');
    state.lastOffset = meta.offset;
    got.push(data);
  });
  await connected(socket);
  await sleep(1000); // B's first replay read is done: the socket is in its room
  await publishOk(a.publishSocket, { userId: 'win', data: 1 });
  await waitFor(() => got.includes(1), { message: 'message 1' });
  socket.disconnect();
  await gone(b, 'win');
  // B sends CONNECT, then reads the stream (its reply 300 ms late): 2 is published while it
  // reads (it reaches B live before the socket is in its room), 3 while B reads again after
  // the join (3 reaches the socket live before the second read's 2 and 3).
  const reconnected = nextEvent(socket, 'connect', 5000).then(async () => {
    await sleep(100);
    await publishOk(a.publishSocket, { userId: 'win', data: 2 });
    await sleep(350);
    await publishOk(a.publishSocket, { userId: 'win', data: 3 });
  });
  socket.connect();
  await reconnected;
  await sleep(1500);
  await publishOk(a.publishSocket, { userId: 'win', data: 4 });
  await waitFor(() => got.includes(4), { message: 'message 4' });
  await sleep(200);
  assert.deepEqual(got, [1, 2, 3, 4], 'each message once, in order, with no de-duplication on the client');
});

test('cluster: while an older sockgate (not relaying) is connected, kept messages go through the adapter and still arrive', { skip: noRedis, timeout: 60_000 }, async () => {
  const { redis, sgs: [a, b] } = await clusterStack({}, 2);
  const relaying = /every instance relays kept messages/;
  await waitFor(() => /every instance relays kept messages.*instances=2/.test(b.proc.text()), { message: 'both instances relay', timeout: 5000 });
  // An instance of an older sockgate, as Redis sees it: a subscriber of the adapter's request
  // channel that does not listen on sockgate's relay channel.
  const { spawn } = await import('node:child_process');
  const older = spawn('redis-cli', ['-p', String(redis.port), 'SSUBSCRIBE', 'socket.io-request#/#'], { stdio: 'ignore' });
  after(() => older.kill());
  await waitFor(() => /older sockgate is connected/.test(a.proc.text()), { message: 'A notices the older instance', timeout: 5000 });
  const { socket } = recoveringClient(b.url, 'sid=user-old');
  const rec = recorder(socket);
  await connected(socket);
  // Past B's second read after the join (mixed-version mode is at least once: a message
  // published during it may come twice, and clients drop a seen offset).
  await sleep(300);
  await publishOk(a.publishSocket, { userId: 'old', data: 'through the adapter' });
  await rec.waitFor((e) => e.args[0] === 'through the adapter', 'the message on B', 5000);
  const meta = rec.metas[rec.events.findIndex((e) => e.args[0] === 'through the adapter')];
  assert.match(meta?.offset ?? '', /:/, 'with its offset');
  older.kill();
  await waitFor(() => (a.proc.text().match(new RegExp(relaying, 'g')) ?? []).length >= 2, { message: 'A relays again once it is gone', timeout: 5000 });
  await publishOk(a.publishSocket, { userId: 'old', data: 'relayed' });
  await rec.waitFor((e) => e.args[0] === 'relayed', 'the relayed message on B', 5000);
  await sleep(200);
  assert.deepEqual(rec.events.map((e) => e.args[0]), ['through the adapter', 'relayed'], 'each once');
});

/**
 * Two relaying instances on one Redis, B reaching it through a proxy that drops the relayed
 * message carrying `lost-on-the-way`, and a recovering client of `userId` on B (settled).
 */
async function lossyPair(userId) {
  const redis = await startRedis(await freePort());
  after(() => redis.kill());
  const fixture = await startFixture();
  after(() => fixture.stop());
  const env = { ...WS, SIDECAR_CLUSTER__REDIS_URL: redis.url };
  const a = await startSockgate({ upstreamUrl: fixture.url, env });
  const lossy = await pushDroppingProxy(redis.port, 'lost-on-the-way');
  const b = await startSockgate({ upstreamUrl: fixture.url, env: { ...env, SIDECAR_CLUSTER__REDIS_URL: lossy.url } });
  after(() => Promise.all([a.stop(), b.stop()]));
  await waitFor(() => /every instance relays kept messages.*instances=2/.test(b.proc.text()), { message: 'both instances relay', timeout: 5000 });
  await sleep(1200); // A has counted B too
  const { socket } = recoveringClient(b.url, `sid=user-${userId}`);
  const rec = recorder(socket);
  await connected(socket);
  await sleep(200);
  return { a, b, lossy, rec };
}

test('cluster: a relayed message lost between Redis and B is mended from the stream — B\'s client gets it, in order', { skip: noRedis, timeout: 60_000 }, async () => {
  const { a, lossy, rec } = await lossyPair('mend');
  for (const data of ['before', 'lost-on-the-way', 'after']) await publishOk(a.publishSocket, { userId: 'mend', data });
  await rec.waitFor((e) => e.args[0] === 'after', 'the message after the lost one', 5000);
  await sleep(200);
  assert.equal(lossy.dropped(), 1, 'the proxy dropped the relayed message on its way to B');
  assert.deepEqual(rec.events.map((e) => e.args[0]), ['before', 'lost-on-the-way', 'after'], 'mended, in order, once');
});

test('cluster: a publish that first mends the chain counts its own recipients, not the messages the mend delivered', { skip: noRedis, timeout: 60_000 }, async () => {
  const { a, b, lossy, rec } = await lossyPair('counted');
  // Through A: the second never reaches B's relay, so B's own next publish mends it first.
  for (const data of ['before', 'lost-on-the-way']) await publishOk(a.publishSocket, { userId: 'counted', data });
  await rec.waitFor((e) => e.args[0] === 'before', 'the first message', 5000);
  await sleep(200);
  const published = await publishOk(b.publishSocket, { userId: 'counted', data: 'after' });
  await rec.waitFor((e) => e.args[0] === 'after', 'the message published on B', 5000);
  assert.equal(lossy.dropped(), 1, 'the proxy dropped the relayed message on its way to B');
  assert.deepEqual(rec.events.map((e) => e.args[0]), ['before', 'lost-on-the-way', 'after'], 'mended, in order, once');
  assert.equal(published.recipients, 1, 'one socket got the message published on B');
});

/**
 * A TCP proxy to Redis that drops, on the connections that subscribe, each chunk Redis pushes
 * that contains `marker` (one published message, as small publishes arrive one per read).
 */
async function pushDroppingProxy(redisPort, marker) {
  const net = await import('node:net');
  const port = await freePort();
  let dropped = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: redisPort, host: '127.0.0.1' });
    let subscriber = false;
    client.on('data', (d) => {
      if (/subscribe/i.test(d.toString('latin1'))) subscriber = true;
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      const text = d.toString('latin1');
      if (subscriber && text.includes(marker) && text.startsWith('>')) return void dropped++;
      if (client.writable) client.write(d);
    });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  after(() => server.close());
  return { url: `redis://127.0.0.1:${port}`, dropped: () => dropped };
}

// A Redis without sharded pub/sub (Redis 6, Upstash, …; issue 33, stage 5): emulated by a
// redis-server 7 whose SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE are renamed away. With
// cluster.pubsub = "auto" (the default) sockgate sees SPUBLISH refused at startup, says so once,
// and carries everything with plain PUBLISH/SUBSCRIBE: the adapter's channels, the self-check,
// the relay (the append script PUBLISHes its entries). Two instances: cross-instance delivery
// once, in order, the same offsets on both; recovery through the other instance; presence.
// Before this stage, startup failed (SSUBSCRIBE unknown).
//   node --test tests/js/redis-plain.test.mjs      (needs redis-server and redis-cli on PATH)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

import {
  startFixture, publishApi, publishOk, freePort, waitFor, sleep, recorder, recoveringClient,
  connected, tmpDir, startSockgate,
} from './harness.mjs';
import { findRedisServer, runSockgateToExit, startPair, startRedis, recoveringClientsOn } from './cluster-helpers.mjs';

const SKIP = !findRedisServer() && 'redis-server not installed';
const NO_SHARDED = ['SPUBLISH', 'SSUBSCRIBE', 'SUNSUBSCRIBE'].flatMap((c) => ['--rename-command', c, '']);
const WS_ONLY = '["websocket"]';
let fixture;
let redis;
let A;
let B;

before(async () => {
  if (SKIP) return;
  fixture = await startFixture();
  redis = await startRedis(await freePort(), { args: NO_SHARDED });
  [A, B] = await startPair(fixture, { SIDECAR_CLUSTER__REDIS_URL: redis.url, SIDECAR_REALTIME__TRANSPORTS: WS_ONLY });
});

after(async () => {
  await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
  await fixture?.stop().catch(() => {});
  await redis?.kill('SIGKILL').catch(() => {});
});

const redisCli = (...args) => execFileSync('redis-cli', ['-p', String(redis.port), ...args], { encoding: 'utf8', timeout: 10_000 });

/** Calls of `command` Redis has run so far (scripts' own commands included). */
function calls(command) {
  const line = redisCli('INFO', 'commandstats').split('\n').find((l) => l.startsWith(`cmdstat_${command}:`));
  return line ? Number(/calls=(\d+)/.exec(line)[1]) : 0;
}

async function ready(inst) {
  await waitFor(async () => (await publishApi(inst.publishSocket, 'GET', '/readyz')).status === 200, {
    timeout: 15_000,
    message: `/readyz on ${inst.url} to be 200`,
  });
}

/** A user's recovering client on A and on B, with their records, connected. */
const clients = (user) => recoveringClientsOn([A, B], user);

/** Until a publish on A reaches `rec` (a client on B) through the relay. */
async function relayUp(user, rec) {
  await waitFor(() => A.proc.text().includes('every instance relays kept messages'), { timeout: 10_000, message: 'A: every instance relays' });
  let k = 0;
  await waitFor(
    async () => {
      await publishOk(A.publishSocket, { userId: user, event: 'probe', data: k++ });
      await sleep(100);
      return rec.of('probe').length > 0;
    },
    { timeout: 10_000, message: 'a publish on A to reach B' },
  );
}

const batch = (users, count, tag) => ({
  messages: Array.from({ length: count }, (_, n) => ({ userId: users[n % users.length], event: 'seq', data: { tag, n } })),
});

test('no SPUBLISH: auto takes plain pub/sub, says why once, both instances ready', { skip: SKIP }, async () => {
  assert.match(redisCli('SPUBLISH', 'x', 'y'), /unknown command/i, 'the sharded commands are gone');
  await Promise.all([ready(A), ready(B)]);
  for (const inst of [A, B]) {
    const said = inst.proc.text().split('\n').filter((l) => l.includes('cross-instance messages use'));
    assert.equal(said.length, 1, inst.proc.text());
    assert.match(said[0], /plain pub\/sub \(PUBLISH\/SUBSCRIBE\).*auto.*refuses SPUBLISH/);
  }
  // The adapter, the self-check and the relay subscribe plain channels.
  const counted = redisCli('PUBSUB', 'NUMSUB', 'socket.io-request#/#', 'sockgate:relay', 'sockgate-canary#').trim().split('\n');
  assert.deepEqual(counted, ['socket.io-request#/#', '2', 'sockgate:relay', '2', 'sockgate-canary#', '2']);
});

test('no SPUBLISH: publishes through A reach B once, in order, the same offsets, through the relay', { skip: SKIP }, async () => {
  const users = ['q1', 'q2', 'q3'];
  const sides = {};
  for (const u of users) sides[u] = await clients(u);
  await relayUp('q1', sides.q1[1].rec);
  await sleep(1500); // the instances count who reads several entries in one relay message

  const published = calls('publish');
  for (let n = 0; n < 10; n++) await publishOk(A.publishSocket, { userId: 'q1', event: 'one', data: n });
  const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 60, 'b'));
  assert.equal(r.status, 200, r.text);
  // The script's PUBLISHes (a relay message per call; none through the adapter's channel).
  assert.ok(calls('publish') - published >= 2, 'the relay PUBLISHes');

  const ones = () => sides.q1[1].rec.of('one');
  await waitFor(() => ones().length >= 10, { message: 'q1 on B: 10 single publishes' });
  for (const [i, u] of users.entries()) {
    const expected = Array.from({ length: 60 }, (_, n) => n).filter((n) => n % 3 === i);
    const offsets = [];
    for (const side of sides[u]) {
      const got = () => side.rec.events.filter((e) => e.event === 'seq');
      await waitFor(() => got().length >= expected.length, { message: `${u}: ${expected.length} messages` });
      await sleep(200);
      assert.deepEqual(got().map((e) => e.args[0].n), expected, `${u}: each once, in order`);
      offsets.push(side.rec.metas.filter((_m, k) => side.rec.events[k].event === 'seq').map((m) => m.offset));
    }
    assert.deepEqual(offsets[0], offsets[1], `${u}: the same offsets on A and B`);
  }
  assert.deepEqual(ones(), Array.from({ length: 10 }, (_, n) => n), 'q1 on B: once, in order');
  for (const side of Object.values(sides).flat()) assert.equal(side.rec.of('recovery_failed').length, 0);

  // Away during more publishes, back through the other instance: replayed once, in order.
  const [onA] = sides.q2;
  onA.socket.disconnect();
  const r2 = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 30, 'away'));
  assert.equal(r2.status, 200, r2.text);
  const back = recoveringClient(B.url, 'sid=user-q2');
  back.state.lastOffset = onA.state.lastOffset;
  const rec = recorder(back.socket);
  await connected(back.socket);
  await waitFor(() => rec.of('seq').length >= 10, { message: 'q2: 10 replayed' });
  await publishOk(A.publishSocket, { userId: 'q2', event: 'seq', data: { tag: 'live', n: 99 } });
  await waitFor(() => rec.of('seq').length >= 11, { message: 'q2: then live' });
  await sleep(200);
  assert.deepEqual(rec.of('seq'), [...Array.from({ length: 10 }, (_, k) => ({ tag: 'away', n: 3 * k + 1 })), { tag: 'live', n: 99 }]);
  assert.equal(rec.of('recovery_failed').length, 0);
  for (const c of [...Object.values(sides).flat(), back]) c.socket.disconnect();
});

test('no SPUBLISH: presence and a broadcast cross instances', { skip: SKIP }, async () => {
  const [, onB] = await clients('p1');
  const r = await publishApi(A.publishSocket, 'GET', '/users/p1');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.online, true, r.text);
  assert.equal(r.json.scope, 'cluster', r.text);
  await publishOk(A.publishSocket, { broadcast: true, event: 'all', data: 1 });
  await waitFor(() => onB.rec.of('all').length === 1, { message: 'the broadcast on B' });
  onB.socket.disconnect();
});

test('no SPUBLISH: cluster.pubsub = "sharded" stops startup, saying what to set', { skip: SKIP }, async () => {
  const run = await runSockgateToExit({
    port: await freePort(),
    upstreamUrl: fixture.url,
    publishSocket: path.join(tmpDir(), 'sockgate.sock'),
    env: { SIDECAR_CLUSTER__REDIS_URL: redis.url, SIDECAR_CLUSTER__PUBSUB: 'sharded', SIDECAR_REALTIME__TRANSPORTS: WS_ONLY },
  });
  assert.notEqual(run.code, 0, `startup fails:\n${run.stderr}`);
  assert.match(run.stderr, /refuses SPUBLISH .* but cluster\.pubsub = "sharded": set it to "auto"/);
});

test('no SPUBLISH: after a Redis restart the plain channels are subscribed again and delivery resumes', { skip: SKIP }, async () => {
  await Promise.all([ready(A), ready(B)]);
  await redis.kill('SIGKILL');
  redis = await startRedis(redis.port, { args: NO_SHARDED });
  const counted = () => redisCli('PUBSUB', 'NUMSUB', 'socket.io-request#/#', 'sockgate:relay').trim().split('\n');
  await waitFor(() => counted().join() === 'socket.io-request#/#,2,sockgate:relay,2', {
    timeout: 15_000,
    message: 'both instances subscribed again',
  });
  await Promise.all([ready(A), ready(B)]);
  const [, onB] = await clients('r1');
  await relayUp('r1', onB.rec);
  await publishOk(A.publishSocket, { userId: 'r1', event: 'after', data: 1 });
  await waitFor(() => onB.rec.of('after').length === 1, { message: 'a publish through A after the restart on B' });
  onB.socket.disconnect();
});

test('cluster.pubsub = "plain" on a Redis with SPUBLISH: works, and warns while sharded instances share it', { skip: SKIP }, async () => {
  const full = await startRedis(await freePort());
  const env = { SIDECAR_CLUSTER__REDIS_URL: full.url, SIDECAR_REALTIME__TRANSPORTS: WS_ONLY };
  const sharded = await startSockgate({ upstreamUrl: fixture.url, env });
  const plain = await startSockgate({ upstreamUrl: fixture.url, env: { ...env, SIDECAR_CLUSTER__PUBSUB: 'plain' } });
  try {
    await Promise.all([ready(sharded), ready(plain)]);
    assert.match(sharded.proc.text(), /cross-instance messages use sharded pub\/sub .*auto.*takes SPUBLISH/);
    assert.match(plain.proc.text(), /cross-instance messages use plain pub\/sub .*cluster\.pubsub = "plain"/);
    assert.match(plain.proc.text(), /instances on the other pub\/sub mode share this Redis/);
    assert.doesNotMatch(sharded.proc.text(), /other pub\/sub mode/);
  } finally {
    await Promise.all([sharded.stop(), plain.stop()]).catch(() => {});
    await full.kill('SIGKILL').catch(() => {});
  }
});

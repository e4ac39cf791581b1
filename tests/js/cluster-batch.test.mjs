// Cluster appends in one script call (issue 33, stage 1): a batch's messages are kept in Redis
// and relayed to the other instances in one EVALSHA, not one per message — and still arrive
// once, in order, with the same offsets on every instance, recoverable from either. A batch
// Redis refuses part of answers as before: the refused room's messages go out live (without
// offsets, its generation retired), the others are kept; none is dropped silently.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';

import {
  startFixture, publishApi, freePort, waitFor, sleep, recorder, recoveringClient, connected,
  publishOk,
} from './harness.mjs';
import { findRedisServer, startPair, startRedis, recoveringClientsOn } from './cluster-helpers.mjs';

const SKIP = !findRedisServer() && 'redis-server not installed';
let fixture;
let redis;
let redisPort;
let A;
let B;

before(async () => {
  if (SKIP) return;
  fixture = await startFixture();
  redisPort = await freePort();
  redis = await startRedis(redisPort);
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
  };
  [A, B] = await startPair(fixture, env);
});

after(async () => {
  await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
  await fixture?.stop().catch(() => {});
  await redis?.kill('SIGKILL').catch(() => {});
});

const redisCli = (...args) => execFileSync('redis-cli', ['-p', String(redisPort), ...args]).toString();

/** Calls of `command` Redis has run so far (scripts' own commands included). */
function calls(command) {
  const line = redisCli('INFO', 'commandstats')
    .split('\n')
    .find((l) => l.startsWith(`cmdstat_${command}:`));
  return line ? Number(/calls=(\d+)/.exec(line)[1]) : 0;
}

/** Counts the messages published on the relay's channel from now on (one more listener). */
async function relayMessages() {
  const sub = spawn('redis-cli', ['-p', String(redisPort), 'SSUBSCRIBE', 'sockgate:relay']);
  let out = '';
  sub.stdout.on('data', (d) => (out += d));
  await waitFor(() => out.includes('ssubscribe'), { message: 'the counting subscriber' });
  return {
    count: () => out.split('\n').filter((l) => l === 'smessage').length,
    stop: () => sub.kill('SIGKILL'),
  };
}

/** A stream id's parts, to order offsets (`<generation>:<ms>-<seq>`). */
function place(offset) {
  const [epoch, id] = offset.split(':');
  const [ms, seq] = id.split('-').map(Number);
  return { epoch, ms, seq };
}

const batch = (users, count, tag) => ({
  messages: Array.from({ length: count }, (_, n) => ({ userId: users[n % users.length], event: 'seq', data: { tag, n } })),
});

/** A user's recovering client on A and on B, with their records, connected. */
const clients = (user) => recoveringClientsOn([A, B], user);

/** Until a publish on A reaches `user`'s client on B: the relay is up both ways. */
async function relayUp(user, rec) {
  let k = 0;
  await waitFor(
    async () => {
      await publishOk(A.publishSocket, { userId: user, event: 'probe', data: k++ });
      await sleep(100);
      return rec.of('probe').length > 0;
    },
    { timeout: 10_000, message: 'the relay to carry a publish from A to B' },
  );
}

test('a batch of 100 to 3 users: one script call, in order, once, the same offsets on both instances', { skip: SKIP }, async () => {
  const users = ['b1', 'b2', 'b3'];
  const sides = {};
  for (const u of users) sides[u] = await clients(u);
  await relayUp('b1', sides.b1[1].rec);
  // The instances count who reads several entries in one relay message every second.
  await sleep(1500);

  const relay = await relayMessages();
  const evalsha = calls('evalsha');
  const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 100, 'one'));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.messages, 100, r.text);
  const scripts = calls('evalsha') - evalsha;
  await sleep(300);
  const relayed = relay.count();
  relay.stop();
  // Before: one call and one relay message per message (100 each).
  assert.ok(scripts <= 3, `${scripts} script calls for a batch of 100 to 3 rooms`);
  assert.ok(relayed <= 3, `${relayed} relay messages for a batch of 100 to 3 rooms`);

  for (const [i, u] of users.entries()) {
    const expected = Array.from({ length: 100 }, (_, n) => n).filter((n) => n % 3 === i);
    const offsets = [];
    for (const side of sides[u]) {
      const got = () => side.rec.events.filter((e) => e.event === 'seq');
      await waitFor(() => got().length >= expected.length, { message: `${u}: ${expected.length} messages` });
      await sleep(200);
      assert.deepEqual(got().map((e) => e.args[0].n), expected, `${u}: each once, in order`);
      const metas = side.rec.metas.filter((_m, k) => side.rec.events[k].event === 'seq');
      offsets.push(metas.map((m) => m.offset));
    }
    assert.deepEqual(offsets[0], offsets[1], `${u}: the same offsets on A and B`);
    const places = offsets[0].map(place);
    for (let k = 1; k < places.length; k++) {
      assert.equal(places[k].epoch, places[0].epoch, `${u}: one generation`);
      const [a, b] = [places[k - 1], places[k]];
      assert.ok(b.ms > a.ms || (b.ms === a.ms && b.seq > a.seq), `${u}: offsets increase`);
    }
  }

  // Away during a second batch, back through the other instance: replayed once, in order.
  const [onA] = sides.b2;
  onA.socket.disconnect();
  const r2 = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 30, 'two'));
  assert.equal(r2.status, 200, r2.text);
  const back = recoveringClient(B.url, 'sid=user-b2');
  back.state.lastOffset = onA.state.lastOffset;
  const rec = recorder(back.socket);
  await connected(back.socket);
  await waitFor(() => rec.of('seq').length >= 10, { message: 'b2: 10 replayed' });
  await sleep(200);
  assert.deepEqual(rec.of('seq'), Array.from({ length: 10 }, (_, k) => ({ tag: 'two', n: 3 * k + 1 })));
  assert.equal(rec.of('recovery_failed').length, 0);
  for (const c of [...Object.values(sides).flat(), back]) c.socket.disconnect();
});

test('a batch Redis refuses part of: the others kept, the refused room live and told, none lost', { skip: SKIP }, async () => {
  const users = ['p1', 'p2', 'p3'];
  const sides = {};
  for (const u of users) sides[u] = await clients(u);
  await relayUp('p1', sides.p1[1].rec);
  await publishOk(A.publishSocket, { userId: 'p2', event: 'before', data: 0 });
  await waitFor(() => sides.p2[1].state.lastOffset, { message: 'p2 on B: an offset' });
  const before = sides.p2[1].state.lastOffset;
  // p2's generation key of the wrong type: the script fails for p2, after p1's messages.
  redisCli('DEL', 'sockgate:history:{user:p2}:epoch');
  redisCli('HSET', 'sockgate:history:{user:p2}:epoch', 'not', 'a string');

  const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 30, 'part'));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.ok, true, r.text);
  for (const [i, u] of users.entries()) {
    const expected = Array.from({ length: 30 }, (_, n) => n).filter((n) => n % 3 === i);
    for (const [s, side] of sides[u].entries()) {
      const got = () => side.rec.events.filter((e) => e.event === 'seq');
      await waitFor(() => got().length >= expected.length, { message: `${u}: ${expected.length} messages` });
      await sleep(200);
      assert.deepEqual(got().map((e) => e.args[0].n), expected, `${u} on ${'AB'[s]}: each once, in order`);
      const metas = side.rec.metas.filter((_m, k) => side.rec.events[k].event === 'seq');
      if (u === 'p2') {
        assert.ok(metas.every((m) => m === undefined), 'not kept: delivered live, without offsets');
      } else {
        assert.ok(metas.every((m) => typeof m?.offset === 'string'), `${u}: kept, with offsets`);
      }
    }
  }
  // The refused room's generation is retired: a client back from before the hole is told.
  await sleep(500);
  const back = recoveringClient(B.url, 'sid=user-p2');
  back.state.lastOffset = before;
  const rec = recorder(back.socket);
  await connected(back.socket);
  await waitFor(() => rec.of('recovery_failed').length === 1, { message: 'p2: recovery_failed' });
  // And the room is kept again.
  const r2 = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(['p2'], 3, 'again'));
  assert.equal(r2.status, 200, r2.text);
  await waitFor(() => rec.of('seq').length >= 3, { message: 'p2: 3 more' });
  const metas = rec.metas.filter((_m, k) => rec.events[k].event === 'seq');
  assert.ok(metas.every((m) => typeof m?.offset === 'string'), 'kept again, with offsets');
  for (const c of [...Object.values(sides).flat(), back]) c.socket.disconnect();
});

test('while an instance that reads one entry per relay message is connected, each entry is a message of its own', { skip: SKIP }, async () => {
  const users = ['o1', 'o2'];
  const sides = {};
  for (const u of users) sides[u] = await clients(u);
  await relayUp('o1', sides.o1[1].rec);
  // An older sockgate, as Redis sees it: a server of the adapter, a listener of the relay and
  // of channels' entries, not of `sockgate:relay:batches`.
  const older = spawn('redis-cli', ['-p', String(redisPort), 'SSUBSCRIBE', 'socket.io-request#/#', 'sockgate:relay', 'sockgate:relay:rooms']);
  let seen = '';
  older.stdout.on('data', (d) => (seen += d));
  after(() => older.kill('SIGKILL'));
  await waitFor(() => seen.split('\n').filter((l) => l === 'ssubscribe').length === 3, { message: 'the older instance subscribed' });
  // Counted within a second by each instance.
  await sleep(1500);
  seen = '';
  const r = await publishApi(A.publishSocket, 'POST', '/publish/batch', batch(users, 20, 'old'));
  assert.equal(r.status, 200, r.text);
  for (const [i, u] of users.entries()) {
    const expected = Array.from({ length: 20 }, (_, n) => n).filter((n) => n % 2 === i);
    for (const side of sides[u]) {
      await waitFor(() => side.rec.of('seq').length >= expected.length, { message: `${u}: 10 messages` });
      await sleep(200);
      assert.deepEqual(side.rec.of('seq').map((d) => d.n), expected, `${u}: each once, in order`);
    }
  }
  const messages = seen.split('\n').filter((l) => l === 'smessage').length;
  const entries = (seen.match(/"o":"/g) || []).length;
  assert.equal(entries, 20, 'every entry relayed');
  assert.equal(messages, 20, 'one entry per relay message, as an older sockgate reads them');
  older.kill('SIGKILL');
  for (const c of Object.values(sides).flat()) c.socket.disconnect();
});

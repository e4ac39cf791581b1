// Cluster mode: two sockgate instances (A and B) sharing rooms through one Redis.
//   node --test tests/js/cluster.test.mjs        (needs redis-server on PATH)
//
// One fixture app, one redis-server of our own on a free loopback port, two websocket-only
// sockgate instances, each with its own port and publish socket. The Redis-outage test kills
// redis-server with SIGKILL and restarts it on the same port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  startFixture,
  startSockgate,
  stopProcess,
  freePort,
  tmpDir,
  connect,
  recorder,
  closeAll,
  publishApi,
  publishOk,
  waitFor,
  sleep,
} from './harness.mjs';
import { findRedisServer, startRedis, runSockgateToExit, quantile, pausableProxy } from './cluster-helpers.mjs';
import { metrics } from './fault-helpers.mjs';

const REDIS = findRedisServer();
const SKIP = REDIS ? false : 'redis-server is not on PATH (install redis-server to run the cluster tests)';
const WS_ONLY = '["websocket"]';

let fixture;
let redis;
let redisPort;
let A;
let B;

/** Env for a cluster-mode instance. */
const clusterEnv = (extra = {}) => ({
  SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
  SIDECAR_REALTIME__TRANSPORTS: WS_ONLY,
  ...extra,
});

async function startInstance(extra) {
  return startSockgate({ upstreamUrl: fixture.url, env: clusterEnv(extra) });
}

before(async () => {
  if (SKIP) return;
  fixture = await startFixture();
  redisPort = await freePort();
  redis = await startRedis(redisPort);
  [A, B] = await Promise.all([startInstance(), startInstance()]);
});

after(async () => {
  // harness.mjs and cluster-helpers.mjs SIGKILL whatever is still running; stop politely first.
  await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
  await fixture?.stop().catch(() => {});
  await redis?.kill('SIGKILL').catch(() => {});
});

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------
const api = (inst, method, p, body, opts) => publishApi(inst.publishSocket, method, p, body, opts);
const pub = (inst, msg) => publishOk(inst.publishSocket, msg);
const ws = (inst, cookie) => connect(inst.url, { cookie, transports: ['websocket'] });

let markerSeq = 0;
/** Publishes a marker to `userId` on `inst` and waits for `rec` to see it: earlier messages on that path have arrived. */
async function fence(inst, rec, userId, timeout = 5000) {
  const tag = `m${++markerSeq}`;
  await pub(inst, { userId, event: 'marker', data: tag });
  await rec.waitFor((e) => e.event === 'marker' && e.args[0] === tag, `marker ${tag} for ${userId}`, timeout);
  return tag;
}

/** Events other than markers, as [event, data] pairs. */
const payload = (rec) => rec.events.filter((e) => e.event !== 'marker').map((e) => [e.event, e.args[0]]);

/** GET /users/{id} until `pred(json)` holds (bounded); returns the last JSON seen. */
async function userUntil(inst, id, pred, timeout = 5000) {
  let last;
  await waitFor(
    async () => {
      const r = await api(inst, 'GET', `/users/${encodeURIComponent(id)}`);
      last = r.json ?? r.text;
      return r.status === 200 && pred(r.json);
    },
    { timeout, message: `GET /users/${id} to match` },
  ).catch(() => {});
  return last;
}

async function statsUntil(inst, pred, timeout = 5000) {
  let last;
  await waitFor(
    async () => {
      const r = await api(inst, 'GET', '/stats');
      last = r.json ?? r.text;
      return r.status === 200 && pred(r.json);
    },
    { timeout, message: 'GET /stats to match' },
  ).catch(() => {});
  return last;
}

/** Waits until A and B both see no sockets cluster-wide (sockets closed by earlier tests are gone). */
async function quiesce() {
  for (const inst of [A, B]) {
    await statsUntil(inst, (s) => s.connections === 0 && s.scope === 'cluster', 5000);
  }
}

// ---------------------------------------------------------------------------
// 1. Cross-instance delivery and latency
// ---------------------------------------------------------------------------
test('publish on A for alice → delivered to alice on B, not to bob on A; latency', { skip: SKIP }, async () => {
  const aliceB = await ws(B, 'sid=alice-token');
  const bobA = await ws(A, 'sid=bob-token');
  try {
    const ra = recorder(aliceB);
    const rb = recorder(bobA);
    const res = await pub(A, { userId: 'alice', event: 'hello', data: { from: 'A' } });
    assert.equal(res.recipients, 0, 'recipients counts sockets on A only (alice is on B)');
    await ra.waitFor((e) => e.event === 'hello', 'hello on alice@B');
    // Marker to bob (user 42) after the alice publish, on the same instance: if the alice
    // message had reached bob it would be there before the marker.
    await fence(A, rb, 42);
    await fence(A, ra, 'alice');
    assert.deepEqual(payload(rb), [], 'bob on A got nothing for alice');
    assert.deepEqual(payload(ra), [['hello', { from: 'A' }]], 'alice on B got it exactly once');

    // Latency: sequential publishes on A's socket, each awaited until alice on B has it.
    const N = 250;
    const waiters = new Map();
    const got = [];
    aliceB.on('lat', (d) => {
      got.push(d.i);
      const w = waiters.get(d.i);
      if (w) {
        waiters.delete(d.i);
        w(performance.now());
      }
    });
    // Warm-up (connection pools, JIT): not measured.
    for (let i = -10; i < 0; i++) {
      const p = new Promise((r) => waiters.set(i, r));
      await pub(A, { userId: 'alice', event: 'lat', data: { i } });
      await Promise.race([p, sleep(5000).then(() => assert.fail(`warm-up ${i} not delivered`))]);
    }
    const lat = [];
    for (let i = 0; i < N; i++) {
      const p = new Promise((r) => waiters.set(i, r));
      const t0 = performance.now();
      const r = await pub(A, { userId: 'alice', event: 'lat', data: { i } });
      assert.equal(r.recipients, 0);
      let timer;
      const t1 = await Promise.race([
        p,
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new Error(`publish ${i} not delivered to alice@B within 5 s`)), 5000);
        }),
      ]).finally(() => clearTimeout(timer));
      lat.push(t1 - t0);
    }
    const p50 = quantile(lat, 0.5);
    const p99 = quantile(lat, 0.99);
    const max = Math.max(...lat);
    console.log(
      `cluster publish→deliver p50=${p50.toFixed(2)}ms p99=${p99.toFixed(2)}ms max=${max.toFixed(2)}ms n=${lat.length}`,
    );
    assert.deepEqual(
      got,
      Array.from({ length: N + 10 }, (_, k) => k - 10),
      'every latency message arrived once, in order',
    );
    assert.ok(p99 < 100, `p99 ${p99.toFixed(2)} ms < 100 ms`);
  } finally {
    closeAll([aliceB, bobA]);
  }
});

// ---------------------------------------------------------------------------
// 2. userIds / room / broadcast / batch across instances
// ---------------------------------------------------------------------------
test('userIds, room, broadcast and batch reach sockets on both instances', { skip: SKIP }, async () => {
  await quiesce();
  const aliceB = await ws(B, 'sid=alice-token');
  const carolA = await ws(A, 'sid=user-carol');
  const daveB = await ws(B, 'sid=user-dave');
  const erinA = await ws(A, 'sid=user-erin');
  const socks = [aliceB, carolA, daveB, erinA];
  const [ra, rc, rd, re] = socks.map(recorder);
  const fenceAll = async () => {
    await Promise.all([
      fence(A, ra, 'alice'),
      fence(B, rc, 'carol'),
      fence(A, rd, 'dave'),
      fence(B, re, 'erin'),
    ]);
  };
  try {
    // userIds from A: alice (on B) and carol (on A); dave and erin are not targeted.
    let r = await pub(A, { userIds: ['alice', 'carol'], event: 'multi', data: 1 });
    assert.equal(r.recipients, 1, 'one targeted socket on A (carol)');
    // room from B: carol's room (carol is on A).
    r = await pub(B, { room: 'user:carol', event: 'roomy', data: 2 });
    assert.equal(r.recipients, 0, 'no targeted socket on B');
    // room with sockets on both instances is not possible with user rooms alone; a room
    // nobody is in reaches no one.
    r = await pub(A, { room: 'user:nobody-here', event: 'ghost', data: 0 });
    assert.equal(r.recipients, 0);
    await fenceAll();
    assert.deepEqual(payload(ra), [['multi', 1]], 'alice@B');
    assert.deepEqual(payload(rc), [['multi', 1], ['roomy', 2]], 'carol@A');
    assert.deepEqual(payload(rd), [], 'dave@B');
    assert.deepEqual(payload(re), [], 'erin@A');

    // broadcast from A reaches every socket on both instances, once.
    for (const rec of [ra, rc, rd, re]) rec.events.length = 0;
    r = await pub(A, { broadcast: true, event: 'all', data: 'b' });
    assert.equal(r.recipients, 2, 'A has two local sockets (carol, erin)');
    // Broadcasts from two instances have no order between them (README, Running several
    // instances): the second is published once the first is everywhere.
    await Promise.all([ra, rc, rd, re].map((rec) => rec.waitFor((e) => e.event === 'all' && e.args[0] === 'b', "A's broadcast")));
    r = await pub(B, { broadcast: true, event: 'all', data: 'b2' });
    assert.equal(r.recipients, 2, 'B has two local sockets (alice, dave)');
    await fenceAll();
    for (const [name, rec] of [['alice', ra], ['carol', rc], ['dave', rd], ['erin', re]]) {
      assert.deepEqual(payload(rec), [['all', 'b'], ['all', 'b2']], `broadcasts at ${name}`);
    }

    // batch on B mixing targets on both instances; order kept per socket.
    for (const rec of [ra, rc, rd, re]) rec.events.length = 0;
    const br = await api(B, 'POST', '/publish/batch', {
      messages: [
        { userId: 'carol', event: 'seq', data: 1 },
        { userIds: ['alice', 'carol'], event: 'seq', data: 2 },
        { room: 'user:erin', event: 'seq', data: 3 },
        { broadcast: true, event: 'seq', data: 4 },
        { userId: 'carol', event: 'seq', data: 5 },
      ],
    });
    assert.equal(br.status, 200, br.text);
    assert.equal(br.json.ok, true, br.text);
    assert.equal(br.json.messages, 5, br.text);
    // Local sockets on B targeted: alice (msg 2) + alice, dave (msg 4) = 3.
    assert.equal(br.json.recipients, 3, `batch recipients are B-local: ${br.text}`);
    await fenceAll();
    // Order is kept per socket for each path: user-room messages (the relay) in order, and
    // on the publishing instance everything in order. Across instances a broadcast travels
    // on the adapter's channel, so it may pass a user-room message (README, "Running several
    // instances").
    const inOrder = (rec, userRoom, broadcast) => {
      const got = payload(rec);
      assert.deepEqual(got.filter(([, n]) => n !== 4), userRoom.map((n) => ['seq', n]));
      assert.deepEqual(got.filter(([, n]) => n === 4), broadcast ? [['seq', 4]] : []);
    };
    inOrder(rc, [1, 2, 5], true); // carol@A
    assert.deepEqual(payload(ra), [['seq', 2], ['seq', 4]], 'alice@B');
    inOrder(re, [3], true); // erin@A
    assert.deepEqual(payload(rd), [['seq', 4]], 'dave@B');
  } finally {
    closeAll(socks);
  }
});

// ---------------------------------------------------------------------------
// 3. Disconnect across instances
// ---------------------------------------------------------------------------
test('POST /users/alice/disconnect on A → alice disconnected on B (and on A)', { skip: SKIP }, async () => {
  await quiesce();
  const aliceB = await ws(B, 'sid=alice-token');
  const aliceA = await ws(A, 'sid=alice-token');
  const carolB = await ws(B, 'sid=user-carol');
  const rc = recorder(carolB);
  try {
    const reasons = [aliceB, aliceA].map(
      (s) => new Promise((resolve) => s.once('disconnect', (reason) => resolve(reason))),
    );
    const r = await api(A, 'POST', '/users/alice/disconnect');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.ok, true, r.text);
    assert.equal(r.json.disconnected, 1, `disconnected counts A's sockets: ${r.text}`);
    const [rb, ra] = await Promise.race([
      Promise.all(reasons),
      sleep(5000).then(() => assert.fail('alice not disconnected on both instances within 5 s')),
    ]);
    assert.equal(rb, 'io server disconnect', 'alice@B was disconnected by the server');
    assert.equal(ra, 'io server disconnect', 'alice@A was disconnected by the server');
    assert.equal(aliceB.connected, false);
    // carol on B untouched.
    await fence(A, rc, 'carol');
    assert.equal(carolB.connected, true, 'carol@B still connected');
    const u = await userUntil(A, 'alice', (j) => j.sockets === 0);
    assert.equal(u.sockets, 0, JSON.stringify(u));
    assert.equal(u.online, false, JSON.stringify(u));

    // Disconnecting a user with sockets only on the other instance.
    const alice2 = await ws(B, 'sid=alice-token');
    const gone = new Promise((resolve) => alice2.once('disconnect', resolve));
    const r2 = await api(A, 'POST', '/users/alice/disconnect');
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.json.disconnected, 0, r2.text);
    assert.equal(
      await Promise.race([gone, sleep(5000).then(() => 'still connected')]),
      'io server disconnect',
    );
  } finally {
    closeAll([aliceB, aliceA, carolB]);
  }
});

// ---------------------------------------------------------------------------
// 4. Presence and stats are cluster-wide
// ---------------------------------------------------------------------------
test('GET /users/alice and /stats on A count sockets on B (scope cluster)', { skip: SKIP }, async () => {
  await quiesce();
  const socks = [];
  try {
    socks.push(await ws(B, 'sid=alice-token'));
    let u = await userUntil(A, 'alice', (j) => j.sockets === 1);
    assert.deepEqual(
      { userId: u.userId, online: u.online, sockets: u.sockets, scope: u.scope },
      { userId: 'alice', online: true, sockets: 1, scope: 'cluster' },
      `alice on B only, asked on A: ${JSON.stringify(u)}`,
    );

    socks.push(await ws(A, 'sid=alice-token'));
    socks.push(await ws(B, 'sid=alice-token'));
    for (const inst of [A, B]) {
      u = await userUntil(inst, 'alice', (j) => j.sockets === 3);
      assert.deepEqual(
        { online: u.online, sockets: u.sockets, scope: u.scope },
        { online: true, sockets: 3, scope: 'cluster' },
        `alice on both (1 on A, 2 on B): ${JSON.stringify(u)}`,
      );
    }
    const nobody = await api(A, 'GET', '/users/nobody');
    assert.equal(nobody.status, 200, nobody.text);
    assert.deepEqual(
      { online: nobody.json.online, sockets: nobody.json.sockets, scope: nobody.json.scope },
      { online: false, sockets: 0, scope: 'cluster' },
      nobody.text,
    );

    socks.push(await ws(A, 'sid=bob-token'));
    for (const inst of [A, B]) {
      const s = await statsUntil(inst, (j) => j.connections === 4);
      assert.equal(s.scope, 'cluster', JSON.stringify(s));
      assert.equal(s.connections, 4, `cluster-wide connections: ${JSON.stringify(s)}`);
      assert.equal(s.users, 2, `alice and bob: ${JSON.stringify(s)}`);
      for (const k of ['rooms', 'publishes', 'deliveries']) {
        assert.equal(typeof s[k], 'number', `${k}: ${JSON.stringify(s)}`);
      }
    }
  } finally {
    closeAll(socks);
  }
});

// ---------------------------------------------------------------------------
// 6. Redis unreachable at startup
// ---------------------------------------------------------------------------
test('Redis unreachable at startup → non-zero exit within 8 s naming the URL', { skip: SKIP }, async () => {
  const deadPort = await freePort(); // nothing listens there: connection refused
  // A port that accepts TCP but never answers: sockgate must give up on its own (5 s).
  const silent = net.createServer((sock) => {
    sock.on('error', () => {});
    silentSockets.add(sock);
  });
  const silentSockets = new Set();
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const silentPort = silent.address().port;
  const cases = [
    { name: 'refused', url: `redis://127.0.0.1:${deadPort}`, shown: `redis://127.0.0.1:${deadPort}` },
    {
      name: 'refused, with password',
      url: `redis://:hunter2secret@127.0.0.1:${deadPort}`,
      shown: `127.0.0.1:${deadPort}`,
      secret: 'hunter2secret',
    },
    { name: 'silent', url: `redis://127.0.0.1:${silentPort}`, shown: `redis://127.0.0.1:${silentPort}` },
  ];
  try {
    const runs = await Promise.all(
      cases.map(async (c) =>
        runSockgateToExit({
          port: await freePort(),
          upstreamUrl: fixture.url,
          publishSocket: path.join(tmpDir(), 'sockgate.sock'),
          env: { SIDECAR_CLUSTER__REDIS_URL: c.url, SIDECAR_REALTIME__TRANSPORTS: WS_ONLY },
          timeout: 15_000,
        }),
      ),
    );
    console.log(`startup without Redis: ${cases.map((c, i) => `${c.name} exit ${runs[i].code} after ${runs[i].elapsedMs} ms`).join('; ')}`);
    for (const [i, run] of runs.entries()) {
      const c = cases[i];
      const what = `${c.name}: code=${run.code} signal=${run.signal} after ${run.elapsedMs} ms\nstderr:\n${run.stderr}\nstdout:\n${run.stdout}`;
      assert.equal(run.killedByTest, false, `sockgate did not exit by itself: ${what}`);
      assert.equal(run.signal, null, what);
      assert.notEqual(run.code, 0, what);
      assert.ok(run.elapsedMs < 8000, `exited within 8 s: ${what}`);
      assert.ok(run.stderr.includes(c.shown), `stderr names the Redis URL (${c.shown}): ${what}`);
      if (c.secret) assert.ok(!(run.stderr + run.stdout).includes(c.secret), `password never printed: ${what}`);
    }
  } finally {
    for (const s of silentSockets) s.destroy();
    silent.close();
  }
});

// ---------------------------------------------------------------------------
// 7. Polling in cluster mode warns about sticky sessions
// ---------------------------------------------------------------------------
test('cluster mode with polling enabled logs the sticky-sessions warning', { skip: SKIP }, async () => {
  const C = await startInstance({ SIDECAR_REALTIME__TRANSPORTS: '["polling","websocket"]' });
  try {
    await waitFor(() => /sticky session/i.test(C.proc.text()), {
      timeout: 5000,
      message: 'the sticky-sessions warning in the log',
    });
    const line = C.proc.text().split('\n').find((l) => /sticky session/i.test(l));
    assert.match(line, /WARN/i, `logged as a warning: ${line}`);
    // The websocket-only instances do not warn.
    for (const inst of [A, B]) {
      assert.doesNotMatch(inst.proc.text(), /sticky session/i, 'websocket-only instance does not warn');
    }
  } finally {
    await C.stop();
  }
});

// ---------------------------------------------------------------------------
// 5. Redis outage: local delivery continues, cross-instance delivery resumes
// ---------------------------------------------------------------------------
test('Redis killed and restarted: local delivery never stops, cluster delivery resumes', { skip: SKIP, timeout: 90_000 }, async () => {
  await quiesce();
  const aliceB = await ws(B, 'sid=alice-token'); // cross-instance target (published on A)
  const carolA = await ws(A, 'sid=user-carol'); // local target on A
  const daveB = await ws(B, 'sid=user-dave'); // local target on B
  const socks = [aliceB, carolA, daveB];
  const ids = socks.map((s) => s.id);
  const disconnects = [];
  for (const s of socks) s.on('disconnect', (reason) => disconnects.push(`${s.id}: ${reason}`));
  const ra = recorder(aliceB);
  const rc = recorder(carolA);
  const rd = recorder(daveB);
  let stop = false;
  let pumps = [];
  try {
    // Cluster works before the outage.
    await pub(A, { userId: 'alice', event: 'pre', data: 1 });
    await ra.waitFor((e) => e.event === 'pre', 'pre-outage cross-instance delivery');

    // Keep publishing to local sockets on both instances every ~50 ms through the outage,
    // timing each publish until its socket has it.
    const sent = { A: [], B: [] };
    const ticks = { A: new Map(), B: new Map() }; // i → {t0, t1, phase}
    let phase = 'before';
    carolA.on('tick', (i) => {
      const t = ticks.A.get(i);
      if (t && t.t1 === undefined) t.t1 = performance.now();
    });
    daveB.on('tick', (i) => {
      const t = ticks.B.get(i);
      if (t && t.t1 === undefined) t.t1 = performance.now();
    });
    const failures = [];
    const pump = async (inst, name, userId) => {
      let n = 0;
      while (!stop) {
        const i = n++;
        ticks[name].set(i, { t0: performance.now(), phase });
        try {
          const r = await api(inst, 'POST', '/publish', { userId, event: 'tick', data: i }, { timeout: 10_000 });
          if (r.status !== 200 || r.json?.ok !== true) failures.push(`${name} #${i}: ${r.status} ${r.text}`);
          else if (r.json.recipients !== 1) failures.push(`${name} #${i}: recipients ${r.json.recipients}`);
          sent[name].push(i);
        } catch (e) {
          failures.push(`${name} #${i}: ${e.message}`);
        }
        await sleep(50);
      }
    };
    pumps = [pump(A, 'A', 'carol'), pump(B, 'B', 'dave')];
    await sleep(300);

    // --- outage ---
    const killedAt = Date.now();
    await redis.kill('SIGKILL');
    const uA = await userUntil(A, 'carol', (j) => j.scope === 'local', 10_000);
    assert.deepEqual(
      { online: uA.online, sockets: uA.sockets, scope: uA.scope },
      { online: true, sockets: 1, scope: 'local' },
      `GET /users/carol on A during the outage: ${JSON.stringify(uA)}`,
    );
    const uB = await userUntil(B, 'alice', (j) => j.scope === 'local', 10_000);
    assert.deepEqual(
      { online: uB.online, sockets: uB.sockets, scope: uB.scope },
      { online: true, sockets: 1, scope: 'local' },
      `GET /users/alice on B during the outage: ${JSON.stringify(uB)}`,
    );
    // alice is on B: A, on its own, does not see her.
    const ax = await api(A, 'GET', '/users/alice');
    assert.equal(ax.status, 200, ax.text);
    assert.equal(ax.json.scope, 'local', ax.text);
    assert.equal(ax.json.sockets, 0, ax.text);
    const st = await api(A, 'GET', '/stats');
    assert.equal(st.json?.scope, 'local', st.text);
    const detectMs = Date.now() - killedAt;
    phase = 'outage'; // Redis is down and both instances know it
    // Stay down a while (longer than fred's max backoff) with the pumps running.
    await sleep(Math.max(0, 6000 - detectMs));
    for (const inst of [A, B]) {
      assert.equal(inst.proc.exited, false, `sockgate ${inst.port} still running`);
      const l = await api(inst, 'GET', '/livez');
      assert.equal(l.status, 200, `/livez during the outage: ${l.text}`);
    }
    // A publish on A for alice (on B) cannot cross now; it must still answer 200.
    const lost = await pub(A, { userId: 'alice', event: 'during', data: 1 });
    assert.equal(lost.recipients, 0);

    // --- recovery ---
    phase = 'recovery';
    const outageTicks = [...ticks.A.values(), ...ticks.B.values()].filter((t) => t.phase === 'outage');
    await waitFor(() => outageTicks.every((t) => t.t1 !== undefined), {
      timeout: 5000,
      message: 'ticks published during the outage to arrive',
    }).catch(() => {});
    const outageLat = outageTicks.filter((t) => t.t1 !== undefined).map((t) => t.t1 - t.t0);
    const fmt = (v) => `${v.toFixed(1)}ms`;
    const outageSummary =
      `local publish→deliver during the outage p50=${fmt(quantile(outageLat, 0.5))} ` +
      `max=${fmt(Math.max(...outageLat))} n=${outageLat.length}/${outageTicks.length}`;
    console.log(`redis outage: local scope seen after ${detectMs} ms; ${outageSummary}`);
    redis = await startRedis(redisPort);
    const restartedAt = Date.now();
    let probe = 0;
    const resumed = await waitFor(
      async () => {
        const i = probe++;
        await pub(A, { userId: 'alice', event: 'probe', data: i });
        await sleep(100);
        return ra.of('probe').length > 0;
      },
      { timeout: 15_000, interval: 0, message: 'cross-instance delivery (A → alice@B) to resume after the Redis restart' },
    ).then(() => Date.now() - restartedAt);
    const uBack = await userUntil(A, 'alice', (j) => j.scope === 'cluster' && j.sockets === 1, 10_000);
    assert.deepEqual(
      { online: uBack.online, sockets: uBack.sockets, scope: uBack.scope },
      { online: true, sockets: 1, scope: 'cluster' },
      `presence is cluster-wide again: ${JSON.stringify(uBack)}`,
    );
    // And the other direction: B → carol on A.
    await pub(B, { userId: 'carol', event: 'back', data: 'B→A' });
    await rc.waitFor((e) => e.event === 'back', 'B → carol@A after recovery', 5000);
    // The publish made on A for alice while Redis was down reached A's sockets only; A knows
    // it, and tells alice once the link is back: never a silent gap.
    await ra.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed on alice@B after the outage', 5000);

    stop = true;
    await Promise.all(pumps);
    // Every tick reached its local socket exactly once, in order.
    await waitFor(() => rc.of('tick').length >= sent.A.length && rd.of('tick').length >= sent.B.length, {
      timeout: 5000,
      message: 'all ticks delivered',
    }).catch(() => {});
    console.log(
      `redis restart: cross-instance delivery resumed ${resumed} ms after restart; ticks A=${sent.A.length} B=${sent.B.length}`,
    );
    assert.deepEqual(failures, [], 'every publish during the outage answered 200 with its local recipient');
    assert.deepEqual(rc.of('tick'), sent.A, 'carol@A got every tick published on A, once, in order');
    assert.deepEqual(rd.of('tick'), sent.B, 'dave@B got every tick published on B, once, in order');
    assert.ok(outageLat.length >= 10, `the pumps ran through the outage: ${outageLat.length} ticks`);
    // Once an instance knows Redis is down it must not wait on Redis to deliver locally.
    assert.equal(outageLat.length, outageTicks.length, `every outage tick arrived: ${outageSummary}`);
    assert.ok(Math.max(...outageLat) < 500, `local delivery during the outage is not held up by Redis: ${outageSummary}`);
    assert.deepEqual(ra.of('during'), [], 'the publish made while Redis was down was not replayed later');
    const probes = ra.of('probe');
    assert.equal(new Set(probes).size, probes.length, `no duplicated probe: ${probes}`);

    // The clients never reconnected.
    assert.deepEqual(disconnects, [], 'no client was disconnected');
    assert.deepEqual(socks.map((s) => s.id), ids, 'socket ids unchanged');
    assert.ok(socks.every((s) => s.connected), 'all clients still connected');
    for (const inst of [A, B]) assert.equal(inst.proc.exited, false, `sockgate ${inst.port} alive`);
  } finally {
    stop = true; // a failed assertion must not leave the pumps running (they keep the process alive)
    await Promise.allSettled(pumps);
    closeAll(socks);
  }
});

// ---------------------------------------------------------------------------
// 6. A stall on one instance's path to Redis only (the others' paths stay fine)
// ---------------------------------------------------------------------------
/** Two more instances, P (publisher) and R (receiver), each reaching Redis through its own pausable proxy. */
async function proxiedPair() {
  const proxies = await Promise.all([pausableProxy(redisPort), pausableProxy(redisPort)]);
  const [P, R] = await Promise.all(
    proxies.map((proxy) => startInstance({ SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${proxy.port}` })),
  );
  return { P, R, proxyP: proxies[0], proxyR: proxies[1] };
}

/** ms from now until `inst`'s /readyz answers 503 (polled every 25 ms), or throws after `timeout`. */
async function msUntilNotReady(inst, timeout = 5000) {
  const t0 = Date.now();
  await waitFor(async () => (await api(inst, 'GET', '/readyz')).status === 503, {
    timeout,
    interval: 25,
    message: `/readyz 503 on ${inst.port}`,
  });
  return Date.now() - t0;
}

/** Publishes on `from` to `userId` until `rec` has one (bounded): cross-instance delivery works. */
async function crossesAgain(from, rec, userId, timeout = 15_000) {
  let n = 0;
  await waitFor(
    async () => {
      const tag = `again-${n++}`;
      await pub(from, { userId, event: 'again', data: tag });
      await sleep(100);
      return rec.of('again').length > 0;
    },
    { timeout, interval: 0, message: `cross-instance delivery to ${userId} again` },
  );
}

for (const stalled of ['publisher', 'receiver']) {
  test(`a stall on the ${stalled}'s Redis connection only: its link goes down within ≈ 1 s, and the receiver's client gets the message or recovery_failed — never a silent gap`, { skip: SKIP, timeout: 60_000 }, async (t) => {
    const { P, R, proxyP, proxyR } = await proxiedPair();
    const aliceR = await ws(R, 'sid=alice-token');
    const ra = recorder(aliceR);
    try {
      await crossesAgain(P, ra, 'alice', 5000);
      const proxy = stalled === 'publisher' ? proxyP : proxyR;
      const down = stalled === 'publisher' ? P : R;
      proxy.pause();
      const pausedAt = Date.now();
      const notReady = msUntilNotReady(down);
      const t0 = Date.now();
      const r = await api(P, 'POST', '/publish', { userId: 'alice', event: 'stalled', data: 1 });
      const publishMs = Date.now() - t0;
      assert.equal(r.status, 200, r.text);
      const downMs = await notReady;
      const reason = (await api(down, 'GET', '/readyz')).json?.reason;
      t.diagnostic(`fault: ${stalled}'s path stalled → publish on P answered in ${publishMs} ms, ${stalled} /readyz 503 after ${downMs} ms: ${reason}`);
      assert.ok(downMs < 1600, `${stalled}'s link marked down after ${downMs} ms`);
      assert.ok(publishMs < 1600, `a publish while the ${stalled}'s path stalls took ${publishMs} ms`);
      const up = (await metrics(down.publishSocket)).get('sockgate_cluster_link_up');
      assert.equal(up, 0, 'sockgate_cluster_link_up is 0 while the link is down');
      await sleep(Math.max(0, 3000 - (Date.now() - pausedAt)));
      proxy.resume();
      const resumedAt = Date.now();
      await waitFor(async () => (await api(down, 'GET', '/readyz')).status === 200, {
        timeout: 10_000,
        message: `/readyz 200 on the ${stalled} again`,
      });
      t.diagnostic(`fault: ${stalled} ready again ${Date.now() - resumedAt} ms after the stall ended`);
      await ra.waitFor(
        (e) => (e.event === 'stalled' && e.args[0] === 1) || e.event === 'recovery_failed',
        "the stalled publish, or recovery_failed, on alice's client",
        10_000,
      );
      t.diagnostic(`fault: alice got ${JSON.stringify(ra.events.filter((e) => e.event !== 'again'))}`);
      if (stalled === 'publisher') {
        // P delivered it to its own sockets only, and knows it: alice is told.
        await ra.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed on alice (P delivered locally only)', 10_000);
      }
      assert.equal((await metrics(down.publishSocket)).get('sockgate_cluster_link_up'), 1, 'link up again');
      await crossesAgain(P, ra, 'alice');
    } finally {
      proxyP.resume();
      proxyR.resume();
      closeAll([aliceR]);
      await Promise.all([P.stop(), R.stop()]);
      await Promise.all([proxyP.close(), proxyR.close()]);
    }
  });
}

// ---------------------------------------------------------------------------
// 7. Answers while a peer or Redis is away: within cluster.request_timeout_ms (1 s here),
//    saying what they cover
// ---------------------------------------------------------------------------
/** The documented bound (cluster.request_timeout_ms, default 1 s), plus room for 2 loaded cores. */
const ANSWER_BOUND_MS = 1600;

/** `GET p` on `inst`, with how long it took. */
async function timedGet(inst, p) {
  const t0 = performance.now();
  const r = await api(inst, 'GET', p);
  return { ms: Math.round(performance.now() - t0), status: r.status, json: r.json, text: r.text };
}

test('an instance stopped (SIGSTOP): presence, rooms and stats answer within the request timeout, marked partial', { skip: SKIP, timeout: 60_000 }, async (t) => {
  await quiesce();
  const C = await startInstance();
  const socks = [];
  let stopped = false;
  try {
    socks.push(await ws(C, 'sid=user-carol'), await ws(B, 'sid=user-dave'));
    const seen = await userUntil(A, 'carol', (j) => j.sockets === 1 && j.scope === 'cluster');
    assert.equal(seen?.sockets, 1, `carol on C seen from A before the stop: ${JSON.stringify(seen)}`);
    const dave = await userUntil(A, 'dave', (j) => j.sockets === 1 && j.scope === 'cluster');
    assert.equal(dave?.sockets, 1, `dave on B seen from A before the stop: ${JSON.stringify(dave)}`);
    stopped = true;
    await stopProcess(C.proc.child.pid);
    const user = await timedGet(A, '/users/carol');
    const stats = await timedGet(A, '/stats');
    const room = await timedGet(A, `/rooms/${encodeURIComponent('user:carol')}`);
    const onB = await timedGet(A, '/users/dave');
    t.diagnostic(`C stopped: GET /users/carol ${user.ms} ms ${user.text}; /stats ${stats.ms} ms ${stats.text}; /rooms ${room.ms} ms ${room.text}; /users/dave ${onB.ms} ms ${onB.text}`);
    for (const [what, r] of [['/users/carol', user], ['/stats', stats], ['/rooms/user:carol', room], ['/users/dave', onB]]) {
      assert.equal(r.status, 200, `${what}: ${r.text}`);
      assert.ok(r.ms < ANSWER_BOUND_MS, `${what} with an instance stopped took ${r.ms} ms (bound: cluster.request_timeout_ms = 1 s)`);
      // carol is on C only: an answer without C must not pass for the whole cluster.
      assert.equal(r.json.scope, 'partial', `${what} does not cover C: ${r.text}`);
      assert.equal(r.json.unanswered, 1, `${what} names how many instances did not answer: ${r.text}`);
    }
    // What the instances that answered hold is in: dave's socket on B, not carol's on C.
    assert.deepEqual([onB.json.online, onB.json.sockets], [true, 1], onB.text);
    assert.equal(stats.json.connections, 1, stats.text);
    process.kill(C.proc.child.pid, 'SIGCONT');
    stopped = false;
    const back = await userUntil(A, 'carol', (j) => j.scope === 'cluster' && j.sockets === 1);
    assert.deepEqual(
      { online: back?.online, scope: back?.scope, unanswered: back?.unanswered },
      { online: true, scope: 'cluster', unanswered: undefined },
      `C answers again: ${JSON.stringify(back)}`,
    );
  } finally {
    if (stopped) process.kill(C.proc.child.pid, 'SIGCONT');
    closeAll(socks);
    await C.stop();
  }
});

test('Redis stalled: presence, rooms and stats answer within the request timeout, marked local', { skip: SKIP, timeout: 60_000 }, async (t) => {
  const proxy = await pausableProxy(redisPort);
  const P = await startInstance({ SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${proxy.port}` });
  const socks = [];
  try {
    socks.push(await ws(P, 'sid=user-erin'));
    const seen = await userUntil(P, 'erin', (j) => j.sockets === 1 && j.scope === 'cluster');
    assert.equal(seen?.scope, 'cluster', `erin on P, link up: ${JSON.stringify(seen)}`);
    proxy.pause();
    // Asked at once: before the self-check has marked the link down, so each waits on Redis.
    const [user, stats, room] = await Promise.all([
      timedGet(P, '/users/erin'),
      timedGet(P, '/stats'),
      timedGet(P, `/rooms/${encodeURIComponent('user:erin')}`),
    ]);
    t.diagnostic(`Redis stalled: GET /users/erin ${user.ms} ms ${user.text}; /stats ${stats.ms} ms ${stats.text}; /rooms ${room.ms} ms ${room.text}`);
    for (const [what, r] of [['/users/erin', user], ['/stats', stats], ['/rooms/user:erin', room]]) {
      assert.equal(r.status, 200, `${what}: ${r.text}`);
      assert.ok(r.ms < ANSWER_BOUND_MS, `${what} with Redis stalled took ${r.ms} ms (bound: cluster.request_timeout_ms = 1 s)`);
      assert.equal(r.json.scope, 'local', `${what} covers this instance only: ${r.text}`);
    }
    assert.equal(user.json.sockets, 1, `erin's socket on P is counted: ${user.text}`);
  } finally {
    proxy.resume();
    closeAll(socks);
    await P.stop();
    await proxy.close();
  }
});

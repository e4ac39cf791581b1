// Managed Redis: two sockgate instances on a real 3-node Redis Cluster, one on a TLS Redis
// with an ACL user (username and password in the URL, the test CA in cluster.tls_ca_file), and
// one behind a Sentinel through a failover.
//   node --test tests/js/redis-cluster.test.mjs     (needs redis-server and redis-cli on PATH)
//
// The cluster: three redis-server processes with --cluster-enabled yes on free loopback ports,
// joined by `redis-cli --cluster create … --cluster-replicas 0`, ready once every node says
// cluster_state:ok. On a Redis Cluster sockgate's relay publishes with plain PUBLISH (the append
// script may SPUBLISH only to a channel of its keys' slot; the cluster bus forwards a plain
// message to every node): kept messages cross exactly once, in order, as on one server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  startFixture,
  startSockgate,
  freePort,
  tmpDir,
  connect,
  recorder,
  closeAll,
  publishApi,
  publishOk,
  recoveringClient,
  connected,
  waitFor,
} from './harness.mjs';
import { findRedisServer, startRedis, runSockgateToExit, redisClusterUnsupported, startRedisCluster } from './cluster-helpers.mjs';

const WS_ONLY = '["websocket"]';

let SKIP = redisClusterUnsupported();
let fixture;
let nodes = [];
let A;
let B;

const cli = (port, ...args) =>
  execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', timeout: 10_000 }).trim();

before(async () => {
  if (SKIP) return;
  const cluster = await startRedisCluster();
  if (cluster.skip) {
    SKIP = cluster.skip;
    return;
  }
  nodes = cluster.nodes;
  fixture = await startFixture();
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: cluster.url,
    SIDECAR_REALTIME__TRANSPORTS: WS_ONLY,
  };
  [A, B] = await Promise.all([
    startSockgate({ upstreamUrl: fixture.url, env }),
    startSockgate({ upstreamUrl: fixture.url, env }),
  ]);
});

after(async () => {
  await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
  await fixture?.stop().catch(() => {});
  await Promise.all(nodes.map((n) => n.kill('SIGKILL').catch(() => {})));
});

const api = (inst, method, p, body) => publishApi(inst.publishSocket, method, p, body);
const pub = (inst, msg) => publishOk(inst.publishSocket, msg);
const ws = (inst, cookie) => connect(inst.url, { cookie, transports: ['websocket'] });

async function ready(inst, timeout = 15_000) {
  await waitFor(async () => (await api(inst, 'GET', '/readyz')).status === 200, {
    timeout,
    message: `/readyz on ${inst.url} to be 200`,
  });
}

let markerSeq = 0;
/** Publishes a marker to `userId` through `inst` and waits for `rec` to see it. */
async function fence(inst, rec, userId) {
  const tag = `m${++markerSeq}`;
  await pub(inst, { userId, event: 'marker', data: tag });
  await rec.waitFor((e) => e.event === 'marker' && e.args[0] === tag, `marker ${tag} for ${userId}`);
}
const payload = (rec) => rec.events.filter((e) => e.event !== 'marker').map((e) => [e.event, e.args[0]]);

test('Redis Cluster: a redis:// URL to one of its nodes stops startup, saying to use redis-cluster://', { skip: SKIP }, async () => {
  const run = await runSockgateToExit({
    port: await freePort(),
    upstreamUrl: fixture.url,
    publishSocket: path.join(tmpDir(), 'sockgate.sock'),
    env: { SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${nodes[0].port}`, SIDECAR_REALTIME__TRANSPORTS: WS_ONLY },
  });
  assert.notEqual(run.code, 0, `startup fails:\n${run.stderr}`);
  assert.match(run.stderr, /cluster\.redis_url .* points at a node of a Redis Cluster: use the redis-cluster:\/\/ scheme/);
});

/** The node (index into `nodes`) that owns `key`'s slot. */
function owner(key) {
  const slot = Number(cli(nodes[0].port, 'CLUSTER', 'KEYSLOT', key));
  const shards = JSON.parse(
    execFileSync('redis-cli', ['-p', String(nodes[0].port), '--json', 'CLUSTER', 'SLOTS'], { encoding: 'utf8' }),
  );
  const shard = shards.find(([from, to]) => slot >= from && slot <= to);
  return nodes.findIndex((n) => n.port === shard[2][1]);
}

test('Redis Cluster: both instances ready, the relay on with plain PUBLISH (said once at startup)', { skip: SKIP }, async () => {
  await Promise.all([ready(A), ready(B)]);
  for (const inst of [A, B]) {
    const said = inst.proc.text().split('\n').filter((l) => l.includes("Redis Cluster: sockgate's relay publishes with PUBLISH"));
    assert.equal(said.length, 1, inst.proc.text());
    await waitFor(() => inst.proc.text().includes('every instance relays kept messages'), {
      timeout: 10_000,
      message: 'every instance counted as relaying (the sharded marker on its slot owner)',
    });
  }
});

test('Redis Cluster: publish through A reaches B (userId, room, broadcast), presence and kicks cross', { skip: SKIP }, async () => {
  await Promise.all([ready(A), ready(B)]);
  const aliceB = await ws(B, 'sid=alice-token');
  const bobB = await ws(B, 'sid=bob-token');
  try {
    const ra = recorder(aliceB);
    const rb = recorder(bobB);
    await pub(A, { userId: 'alice', event: 'hello', data: 1 });
    await pub(A, { room: 'user:42', event: 'roomy', data: 2 });
    await pub(A, { broadcast: true, event: 'all', data: 3 });
    await fence(A, ra, 'alice');
    await fence(A, rb, 42);
    assert.deepEqual(payload(ra), [['hello', 1], ['all', 3]], 'alice on B: her message and the broadcast, once');
    assert.deepEqual(payload(rb), [['roomy', 2], ['all', 3]], 'bob on B: his room and the broadcast, once');

    // Presence asks every instance (PUBSUB SHARDNUMSUB to the request channel's slot owner).
    const r = await api(A, 'GET', '/users/alice');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.online, true, `alice (on B) is online as seen from A: ${r.text}`);

    const gone = new Promise((resolve) => aliceB.once('disconnect', resolve));
    const kick = await api(A, 'POST', '/users/alice/disconnect');
    assert.equal(kick.status, 200, kick.text);
    assert.equal(await gone, 'io server disconnect', 'alice on B disconnected by a kick through A');
    assert.equal(bobB.connected, true, 'bob stays');
  } finally {
    closeAll([aliceB, bobB]);
  }
});

test('Redis Cluster: history replays through B after a reconnect, for users on different slots', { skip: SKIP }, async () => {
  await Promise.all([ready(A), ready(B)]);
  // Users whose history keys land on different nodes (three, if the first 40 names reach all).
  const byNode = new Map();
  for (let n = 0; n < 40 && byNode.size < nodes.length; n++) {
    const user = `slot${n}`;
    const at = owner(`sockgate:history:{user:${user}}`);
    if (!byNode.has(at)) byNode.set(at, user);
  }
  const users = [...byNode.values()];
  assert.ok(users.length >= 2, `users on at least two nodes: ${JSON.stringify([...byNode])}`);

  for (const user of users) {
    const cookie = `sid=user-${user}`;
    const { socket, state } = recoveringClient(A.url, cookie);
    const live = recorder(socket);
    await connected(socket);
    for (let n = 1; n <= 3; n++) await pub(A, { userId: user, event: 'seq', data: n });
    await live.waitFor((e) => e.args[0] === 3, `3 live messages for ${user}`);
    closeAll([socket]);
    for (let n = 4; n <= 6; n++) await pub(A, { userId: user, event: 'seq', data: n });

    // Both keys of the room in one slot, on the node that owns it.
    const stream = `sockgate:history:{user:${user}}`;
    const node = nodes[owner(stream)];
    assert.equal(cli(node.port, 'CLUSTER', 'KEYSLOT', `${stream}:epoch`), cli(node.port, 'CLUSTER', 'KEYSLOT', stream));
    assert.equal(cli(node.port, 'XLEN', stream), '6', `${stream} holds the 6 messages`);

    const back = recoveringClient(B.url, cookie);
    back.state.lastOffset = state.lastOffset;
    const rec = recorder(back.socket);
    await connected(back.socket);
    await rec.waitFor((e) => e.args[0] === 6, `the replay through B for ${user}`);
    await pub(A, { userId: user, event: 'seq', data: 7 });
    await rec.waitFor((e) => e.args[0] === 7, `a live message through A after the replay for ${user}`);
    const seen = rec.events.filter((e) => e.event === 'seq').map((e) => e.args[0]);
    assert.deepEqual(seen, [4, 5, 6, 7], `${user}: what was missed, in order, then live (users: ${users})`);
    assert.equal(rec.of('recovery_failed').length, 0);
    closeAll([back.socket]);
  }
});

test('Redis Cluster: kept messages cross through the relay — once, in order, the same offsets, users on several slots', { skip: SKIP }, async () => {
  await Promise.all([ready(A), ready(B)]);
  const byNode = new Map();
  for (let n = 0; n < 40 && byNode.size < nodes.length; n++) {
    const user = `relay${n}`;
    const at = owner(`sockgate:history:{user:${user}}`);
    if (!byNode.has(at)) byNode.set(at, user);
  }
  const users = [...byNode.values()];
  assert.ok(users.length >= 2, `users on at least two nodes: ${JSON.stringify([...byNode])}`);
  const sides = {};
  for (const user of users) {
    sides[user] = [];
    for (const inst of [A, B]) {
      const c = recoveringClient(inst.url, `sid=user-${user}`);
      const rec = recorder(c.socket);
      await connected(c.socket);
      sides[user].push({ ...c, rec });
    }
  }
  const published = () => nodes.reduce((sum, n) => {
    const line = cli(n.port, 'INFO', 'commandstats').split('\n').find((l) => l.startsWith('cmdstat_publish:'));
    return sum + (line ? Number(/calls=(\d+)/.exec(line)[1]) : 0);
  }, 0);
  const before = published();
  const messages = Array.from({ length: 30 }, (_, n) => ({ userId: users[n % users.length], event: 'seq', data: n }));
  const r = await api(A, 'POST', '/publish/batch', { messages });
  assert.equal(r.status, 200, r.text);
  for (const [i, user] of users.entries()) {
    const expected = messages.map((m) => m.data).filter((n) => n % users.length === i);
    const offsets = [];
    for (const side of sides[user]) {
      await side.rec.waitFor(() => side.rec.of('seq').length >= expected.length, `${user}: ${expected.length} messages`);
      await new Promise((res) => setTimeout(res, 200));
      assert.deepEqual(side.rec.of('seq'), expected, `${user}: each once, in order`);
      offsets.push(side.rec.metas.filter((_m, k) => side.rec.events[k].event === 'seq').map((m) => m.offset));
    }
    assert.deepEqual(offsets[0], offsets[1], `${user}: the same offsets on A and B`);
  }
  assert.ok(published() - before >= users.length, 'the append script PUBLISHed the relay messages');
  closeAll(Object.values(sides).flat().map((s) => s.socket));
});

// ---------------------------------------------------------------------------
// TLS, with an ACL user
// ---------------------------------------------------------------------------
function makeCerts(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore', timeout: 20_000 });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=sockgate test CA');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'ext.cnf');
}

function tlsUnsupported() {
  if (!findRedisServer()) return 'redis-server is not on PATH';
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    return 'openssl is not on PATH (it makes the test certificates)';
  }
  return false;
}

test('TLS Redis: rediss:// with an ACL user, the test CA in cluster.tls_ca_file; untrusted without it; no password in logs', { skip: tlsUnsupported() }, async (t) => {
  const dir = tmpDir('sockgate-tls-');
  makeCerts(dir);
  const [plain, tlsPort] = [await freePort(), await freePort()];
  let redis;
  try {
    redis = await startRedis(plain, {
      args: [
        '--tls-port', String(tlsPort),
        '--tls-cert-file', path.join(dir, 'server.crt'),
        '--tls-key-file', path.join(dir, 'server.key'),
        '--tls-ca-cert-file', path.join(dir, 'ca.crt'),
        '--tls-auth-clients', 'no',
        '--user', 'app', 'on', '>tls-s3cret', '~*', '&*', '+@all',
      ],
    });
  } catch (e) {
    if (/tls/i.test(String(e.message))) return t.skip(`redis-server without TLS support: ${String(e.message).split('\n')[0]}`);
    throw e;
  }
  const tlsFixture = await startFixture();
  try {
    const url = `rediss://app:tls-s3cret@127.0.0.1:${tlsPort}`;
    // The system's roots do not know the test CA: startup fails, naming the key.
    const refused = await runSockgateToExit({
      port: await freePort(),
      upstreamUrl: tlsFixture.url,
      publishSocket: path.join(tmpDir(), 'sockgate.sock'),
      env: { SIDECAR_CLUSTER__REDIS_URL: url, SIDECAR_REALTIME__TRANSPORTS: WS_ONLY },
    });
    assert.notEqual(refused.code, 0, `startup fails against an untrusted certificate:\n${refused.stderr}`);
    assert.match(refused.stderr, /cluster\.redis_url/);
    assert.doesNotMatch(refused.stdout + refused.stderr, /tls-s3cret/);

    const sg = await startSockgate({
      upstreamUrl: tlsFixture.url,
      env: {
        SIDECAR_CLUSTER__REDIS_URL: url,
        SIDECAR_CLUSTER__TLS_CA_FILE: path.join(dir, 'ca.crt'),
        SIDECAR_REALTIME__TRANSPORTS: WS_ONLY,
      },
    });
    try {
      await ready(sg);
      const { socket, state } = recoveringClient(sg.url, 'sid=user-tls');
      const rec = recorder(socket);
      await connected(socket);
      await pub(sg, { userId: 'tls', event: 'seq', data: 1 });
      await rec.waitFor((e) => e.args[0] === 1, 'a message through the TLS Redis');
      closeAll([socket]);
      await pub(sg, { userId: 'tls', event: 'seq', data: 2 });
      const back = recoveringClient(sg.url, 'sid=user-tls');
      back.state.lastOffset = state.lastOffset;
      const again = recorder(back.socket);
      await connected(back.socket);
      await again.waitFor((e) => e.args[0] === 2, 'the replay from the TLS Redis');
      closeAll([back.socket]);
      assert.equal(
        execFileSync('redis-cli', ['-p', String(plain), 'XLEN', 'sockgate:history:{user:tls}'], { encoding: 'utf8' }).trim(),
        '2',
      );
      assert.doesNotMatch(sg.proc.text(), /tls-s3cret/, 'the password is never logged');
    } finally {
      await sg.stop();
    }
  } finally {
    await tlsFixture.stop().catch(() => {});
    await redis.kill('SIGKILL').catch(() => {});
  }
});


// ---------------------------------------------------------------------------
// Sentinel, with a failover
// ---------------------------------------------------------------------------
test('Sentinel: redis-sentinel:// finds the master, and the new one after a failover', { skip: findRedisServer() ? false : 'redis-server is not on PATH' }, async () => {
  const [masterPort, replicaPort, sentinelPort] = [await freePort(), await freePort(), await freePort()];
  const master = await startRedis(masterPort);
  const replica = await startRedis(replicaPort, { args: ['--replicaof', '127.0.0.1', String(masterPort)] });
  const conf = path.join(tmpDir('sockgate-sentinel-'), 'sentinel.conf');
  fs.writeFileSync(
    conf,
    [
      `port ${sentinelPort}`,
      'bind 127.0.0.1',
      `sentinel monitor mymaster 127.0.0.1 ${masterPort} 1`,
      'sentinel down-after-milliseconds mymaster 1000',
      'sentinel failover-timeout mymaster 5000',
      '',
    ].join('\n'),
  );
  // By hand, not through startRedis: the config file must be redis-server's first argument.
  const sentinel = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  const sentinelFixture = await startFixture();
  let sg;
  try {
    const masterIs = (port) =>
      cli(sentinelPort, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'mymaster').split('\n')[1] === String(port);
    await waitFor(() => { try { return masterIs(masterPort); } catch { return false; } }, {
      timeout: 10_000,
      message: 'the sentinel to name the master',
    });
    sg = await startSockgate({
      upstreamUrl: sentinelFixture.url,
      env: {
        SIDECAR_CLUSTER__REDIS_URL: `redis-sentinel://127.0.0.1:${sentinelPort}?sentinelServiceName=mymaster`,
        SIDECAR_REALTIME__TRANSPORTS: WS_ONLY,
      },
    });
    await ready(sg);
    const { socket } = recoveringClient(sg.url, 'sid=user-sentinel');
    const rec = recorder(socket);
    await connected(socket);
    await pub(sg, { userId: 'sentinel', event: 'seq', data: 1 });
    await rec.waitFor((e) => e.args[0] === 1, 'a message through the master');
    assert.equal(cli(masterPort, 'XLEN', 'sockgate:history:{user:sentinel}'), '1');

    // The replica in sync, and known to the sentinel, before it can be promoted.
    await waitFor(() => cli(replicaPort, 'XLEN', 'sockgate:history:{user:sentinel}') === '1', {
      timeout: 15_000,
      message: 'the replica to have the history',
    });
    await waitFor(() => cli(sentinelPort, 'SENTINEL', 'REPLICAS', 'mymaster').includes(String(replicaPort)), {
      timeout: 15_000,
      message: 'the sentinel to know the replica',
    });
    cli(sentinelPort, 'SENTINEL', 'FAILOVER', 'mymaster');
    await waitFor(() => masterIs(replicaPort), { timeout: 15_000, message: 'the failover to the replica' });
    // Sentinel demotes the old master (and closes its clients): sockgate asks the sentinel
    // again and writes to the new master.
    await waitFor(() => cli(masterPort, 'ROLE').startsWith('slave'), {
      timeout: 15_000,
      message: 'the old master to be demoted',
    });
    await waitFor(() => /Redis subscriber connection re-established|Redis connection lost/.test(sg.proc.text()), {
      timeout: 15_000,
      message: 'sockgate to see its connections to the old master closed',
    });
    let n = 1;
    await waitFor(
      async () => {
        await pub(sg, { userId: 'sentinel', event: 'seq', data: ++n });
        const xlen = Number(cli(replicaPort, 'XLEN', 'sockgate:history:{user:sentinel}'));
        return xlen > 1 && (await api(sg, 'GET', '/readyz')).status === 200;
      },
      { timeout: 20_000, interval: 500, message: 'sockgate to write to the new master and be ready' },
    );
    await rec.waitFor((e) => e.args[0] === n, 'a message through the new master');
    closeAll([socket]);
  } finally {
    await sg?.stop().catch(() => {});
    await sentinelFixture.stop().catch(() => {});
    sentinel.kill('SIGKILL');
    await Promise.all([master.kill('SIGKILL').catch(() => {}), replica.kill('SIGKILL').catch(() => {})]);
  }
});

// Webhooks to the app: user.online / user.offline, batched, signed, retried, bounded, and
// cluster-wide in cluster mode.
//   cargo build --bins && node --test tests/js/webhooks.test.mjs   (cluster cases need redis-server)
//
// A receiver of our own (a node:http server) records every POST with its raw body and can be
// told to answer 500 a number of times. Grace periods are shortened to keep the file fast.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startFixture,
  startSockgate,
  startStack,
  freePort,
  connect,
  waitFor,
  sleep,
  publishApi,
} from './harness.mjs';
import { metrics } from './fault-helpers.mjs';
import {
  findRedisServer,
  startRedis,
  redisClusterUnsupported,
  startRedisCluster,
  pausableProxy,
} from './cluster-helpers.mjs';
import { verifyWebhook } from '../../clients/node/index.mjs';

const SECRET = 'test-webhook-secret';
const GRACE_MS = 600;

/** A webhook receiver: `requests` (headers, raw body, parsed events), `failNext` 500s. */
async function startReceiver() {
  const receiver = {
    requests: [],
    failNext: 0,
    /** Every event accepted (answered 2xx), in order. */
    get events() {
      return this.requests.filter((r) => r.status === 204).flatMap((r) => r.json.events);
    },
    of(name, userId) {
      return this.events.filter((e) => e.name === name && e.userId === userId);
    },
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      let json = null;
      try {
        json = JSON.parse(raw.toString('utf8'));
      } catch {}
      const status = receiver.failNext > 0 ? 500 : 204;
      if (status === 500) receiver.failNext -= 1;
      receiver.requests.push({ method: req.method, url: req.url, headers: req.headers, raw, json, status });
      res.writeHead(status).end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${server.address().port}/hooks`;
  receiver.close = () => new Promise((resolve) => server.close(resolve));
  return receiver;
}

const hookEnv = (url, extra = {}) => ({
  SIDECAR_WEBHOOKS__URL: url,
  SIDECAR_WEBHOOKS__SECRET: SECRET,
  SIDECAR_WEBHOOKS__GRACE_MS: String(GRACE_MS),
  SIDECAR_WEBHOOKS__LINGER_MS: '20',
  SIDECAR_WEBHOOKS__RETRY_BASE_MS: '100',
  ...extra,
});

const tab = (url, user, transports) =>
  connect(url, { cookie: `sid=user-${user}`, ...(transports ? { transports } : {}) });

describe('webhooks, one instance', () => {
  let receiver;
  let stack;

  before(async () => {
    receiver = await startReceiver();
    stack = await startStack({ env: hookEnv(receiver.url) });
  });

  after(async () => {
    await stack?.stop();
    await receiver?.close();
  });

  test('online on the first tab, none for a second, offline only after the last closes and the grace passes', async () => {
    const first = await tab(stack.url, 'w1');
    await waitFor(() => receiver.of('user.online', 'w1').length === 1, { message: 'user.online for w1' });
    const second = await tab(stack.url, 'w1');
    first.close();
    await sleep(GRACE_MS + 300);
    assert.equal(receiver.of('user.online', 'w1').length, 1, 'a second tab is not a second online');
    assert.equal(receiver.of('user.offline', 'w1').length, 0, 'a tab is still open');
    const closedAt = Date.now();
    second.close();
    await sleep(GRACE_MS / 3);
    assert.equal(receiver.of('user.offline', 'w1').length, 0, 'offline waits for the grace period');
    await waitFor(() => receiver.of('user.offline', 'w1').length === 1, { message: 'user.offline for w1' });
    assert.ok(Date.now() - closedAt >= GRACE_MS, 'not before the grace period');
    const [online] = receiver.of('user.online', 'w1');
    const [offline] = receiver.of('user.offline', 'w1');
    assert.deepEqual(Object.keys(online), ['id', 'name', 'userId', 'at']);
    assert.notEqual(online.id, offline.id);
    assert.ok(offline.at >= online.at && online.at > Date.now() - 60_000);
  });

  test('a reload within the grace period produces neither offline nor a second online', async () => {
    const before = await tab(stack.url, 'w2');
    await waitFor(() => receiver.of('user.online', 'w2').length === 1, { message: 'user.online for w2' });
    before.close();
    await sleep(50);
    const after = await tab(stack.url, 'w2');
    await sleep(GRACE_MS + 400);
    assert.equal(receiver.of('user.online', 'w2').length, 1);
    assert.equal(receiver.of('user.offline', 'w2').length, 0);
    after.close();
    await waitFor(() => receiver.of('user.offline', 'w2').length === 1, { message: 'user.offline for w2' });
  });

  test('every POST is signed over its exact body; a wrong secret does not verify', async () => {
    assert.ok(receiver.requests.length > 0);
    for (const r of receiver.requests) {
      assert.equal(r.method, 'POST');
      assert.equal(r.url, '/hooks');
      assert.equal(r.headers['content-type'], 'application/json');
      assert.match(r.headers['x-sockgate-signature'], /^sha256=[0-9a-f]{64}$/);
      assert.ok(verifyWebhook(r.raw, r.headers['x-sockgate-signature'], SECRET), 'signature verifies');
      assert.ok(!verifyWebhook(r.raw, r.headers['x-sockgate-signature'], 'another-secret'));
      assert.ok(!verifyWebhook(Buffer.concat([r.raw, Buffer.from(' ')]), r.headers['x-sockgate-signature'], SECRET));
    }
  });

  test('a batch answered 500 is sent again, with the same event ids', async () => {
    receiver.failNext = 1;
    const seen = receiver.requests.length;
    const socket = await tab(stack.url, 'w3');
    await waitFor(() => receiver.of('user.online', 'w3').length === 1, { message: 'user.online for w3 after a 500' });
    const tries = receiver.requests.slice(seen).filter((r) => r.json?.events.some((e) => e.userId === 'w3'));
    assert.equal(tries.length, 2, 'one 500, then delivered');
    assert.equal(tries[0].status, 500);
    assert.deepEqual(tries[1].json.events.map((e) => e.id), tries[0].json.events.map((e) => e.id));
    const m = await metrics(stack.publishSocket);
    assert.ok(m.get('sockgate_webhook_events_delivered_total') >= 3);
    assert.equal(m.get('sockgate_webhook_events_failed_total'), 0);
    socket.close();
  });
});

const ALL_EVENTS = '["user.online","user.offline","room.occupied","room.vacated","member.added","member.removed"]';

describe('webhooks for channels and presence members, one instance', () => {
  let receiver;
  let stack;
  const roomEvents = (name, room) => receiver.events.filter((e) => e.name === name && e.room === room);

  before(async () => {
    receiver = await startReceiver();
    stack = await startStack({
      env: hookEnv(receiver.url, {
        SIDECAR_WEBHOOKS__EVENTS: ALL_EVENTS,
        SIDECAR_CHANNELS__PRESENCE_GRACE_MS: String(GRACE_MS),
      }),
    });
    await stack.control({
      sessionExtra: {
        m1: { rooms: ['team:w', 'presence:w'] },
        m2: { rooms: ['team:w', 'presence:w'] },
      },
    });
  });

  after(async () => {
    await stack?.stop();
    await receiver?.close();
  });

  test('room.occupied on the first socket, room.vacated after the last and the grace; member.added/removed once per user', async () => {
    const a = [await tab(stack.url, 'm1'), await tab(stack.url, 'm1')];
    await waitFor(() => roomEvents('room.occupied', 'team:w').length === 1, { message: 'room.occupied' });
    await waitFor(() => roomEvents('member.added', 'presence:w').length === 1, { message: 'member.added m1' });
    const b = await tab(stack.url, 'm2');
    await waitFor(() => roomEvents('member.added', 'presence:w').length === 2, { message: 'member.added m2' });
    assert.equal(roomEvents('room.occupied', 'team:w').length, 1, 'occupied once');
    assert.equal(roomEvents('room.occupied', 'presence:w').length, 1, 'a presence room is a channel too');
    const [occupied] = roomEvents('room.occupied', 'team:w');
    assert.deepEqual(Object.keys(occupied), ['id', 'name', 'room', 'at']);
    const added = roomEvents('member.added', 'presence:w');
    assert.deepEqual(added.map((e) => e.userId), ['m1', 'm2']);
    assert.deepEqual(Object.keys(added[0]), ['id', 'name', 'userId', 'room', 'at']);
    a[0].close();
    b.close();
    await waitFor(() => roomEvents('member.removed', 'presence:w').length === 1, { message: 'member.removed m2' });
    assert.equal(roomEvents('member.removed', 'presence:w')[0].userId, 'm2');
    assert.equal(roomEvents('room.vacated', 'team:w').length, 0, 'm1 still has a socket there');
    const closedAt = Date.now();
    a[1].close();
    await waitFor(() => roomEvents('room.vacated', 'team:w').length === 1, { message: 'room.vacated' });
    assert.ok(Date.now() - closedAt >= GRACE_MS, 'not before the grace');
    await waitFor(() => roomEvents('member.removed', 'presence:w').length === 2, { message: 'member.removed m1' });
  });
});

test('receiver down: the queue stays bounded and drops the oldest, counted', async () => {
  const downPort = await freePort();
  const stack = await startStack({
    env: hookEnv(`http://127.0.0.1:${downPort}/hooks`, {
      SIDECAR_WEBHOOKS__MAX_QUEUE: '3',
      SIDECAR_WEBHOOKS__MAX_BATCH: '1',
      SIDECAR_WEBHOOKS__MAX_ATTEMPTS: '100',
      SIDECAR_WEBHOOKS__RETRY_BASE_MS: '2000',
    }),
  });
  try {
    const sockets = [];
    for (let i = 0; i < 12; i += 1) sockets.push(await tab(stack.url, `q${i}`));
    const m = await waitFor(
      async () => {
        const m = await metrics(stack.publishSocket);
        return m.get('sockgate_webhook_events_dropped_total') >= 8 && m;
      },
      { message: 'dropped events counted' },
    );
    assert.ok(m.get('sockgate_webhook_queue_events') <= 3, 'never more than webhooks.max_queue waiting');
    assert.equal(m.get('sockgate_webhook_events_delivered_total'), 0);
    const logged = stack.sockgate.text().match(/webhook queue full/g) ?? [];
    assert.equal(logged.length, 1, 'one log line per episode');
    for (const s of sockets) s.close();
  } finally {
    await stack.stop();
  }
});

/** One Redis: {url, stop}. */
async function oneRedis() {
  const redis = await startRedis(await freePort());
  return { url: redis.url, stop: () => redis.kill('SIGKILL') };
}

/** A 3-node Redis Cluster: {url, stop}, or {skip}. */
async function redisCluster() {
  const cluster = await startRedisCluster();
  if (cluster.skip) return cluster;
  return { url: cluster.url, stop: () => Promise.all(cluster.nodes.map((n) => n.kill('SIGKILL'))) };
}

const clusterSetups = [
  ['one Redis', findRedisServer() ? false : 'redis-server is not on PATH', oneRedis],
  ['a Redis Cluster', redisClusterUnsupported(), redisCluster],
];

for (const [backend, unsupported, startBackend] of clusterSetups)
describe(`webhooks, two cluster instances on ${backend}`, { skip: unsupported }, () => {
  let receiver;
  let fixture;
  let redis;
  let A;
  let B;
  const WS = ['websocket'];

  before(async (t) => {
    redis = await startBackend();
    if (redis.skip) {
      t.skip(redis.skip);
      return;
    }
    receiver = await startReceiver();
    fixture = await startFixture();
    const env = hookEnv(receiver.url, {
      SIDECAR_CLUSTER__REDIS_URL: redis.url,
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
      SIDECAR_WEBHOOKS__INSTANCE_TTL_MS: '1500',
      SIDECAR_WEBHOOKS__EVENTS: ALL_EVENTS,
    });
    await fetch(`${fixture.url}/__control`, {
      method: 'POST',
      body: JSON.stringify({ sessionExtra: { k1: { rooms: ['team:k', 'presence:k'] } } }),
    });
    [A, B] = await Promise.all([
      startSockgate({ upstreamUrl: fixture.url, env }),
      startSockgate({ upstreamUrl: fixture.url, env }),
    ]);
  });

  after(async () => {
    await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
    await fixture?.stop().catch(() => {});
    await redis?.stop?.().catch(() => {});
    await receiver?.close();
  });

  test('a user on A and B is online once, and offline once, when the last socket on either closes', async () => {
    const onA = await tab(A.url, 'c1', WS);
    await waitFor(() => receiver.of('user.online', 'c1').length === 1, { message: 'user.online for c1' });
    const onB = await tab(B.url, 'c1', WS);
    await sleep(300);
    onA.close();
    await sleep(GRACE_MS + 400);
    assert.equal(receiver.of('user.online', 'c1').length, 1, 'B did not send a second online');
    assert.equal(receiver.of('user.offline', 'c1').length, 0, 'still connected on B');
    onB.close();
    await waitFor(() => receiver.of('user.offline', 'c1').length === 1, { message: 'user.offline for c1' });
    await sleep(GRACE_MS + 300);
    assert.equal(receiver.of('user.offline', 'c1').length, 1, 'not sent by both instances');
  });

  test('a channel and a presence room with sockets on A and B: occupied, added, removed and vacated once each', async () => {
    const onBoth = await Promise.all([tab(A.url, 'k1', WS), tab(B.url, 'k1', WS), tab(A.url, 'k1', WS), tab(B.url, 'k1', WS)]);
    const of = (name, room) => receiver.events.filter((e) => e.name === name && e.room === room);
    await waitFor(() => of('room.occupied', 'team:k').length >= 1 && of('member.added', 'presence:k').length >= 1, { message: 'occupied and added' });
    await sleep(400);
    assert.equal(of('room.occupied', 'team:k').length, 1);
    assert.equal(of('member.added', 'presence:k').length, 1);
    for (const s of onBoth) s.close();
    await waitFor(() => of('room.vacated', 'team:k').length >= 1 && of('member.removed', 'presence:k').length >= 1, { message: 'vacated and removed' });
    await sleep(GRACE_MS + 300);
    assert.equal(of('room.vacated', 'team:k').length, 1);
    assert.equal(of('member.removed', 'presence:k').length, 1);
  });

  test('first sockets opening on A and B at once give exactly one online', async () => {
    const sockets = await Promise.all([tab(A.url, 'c2', WS), tab(B.url, 'c2', WS), tab(A.url, 'c2', WS), tab(B.url, 'c2', WS)]);
    await waitFor(() => receiver.of('user.online', 'c2').length >= 1, { message: 'user.online for c2' });
    await sleep(400);
    assert.equal(receiver.of('user.online', 'c2').length, 1);
    for (const s of sockets) s.close();
    await waitFor(() => receiver.of('user.offline', 'c2').length === 1, { message: 'user.offline for c2' });
    await sleep(GRACE_MS + 300);
    assert.equal(receiver.of('user.offline', 'c2').length, 1);
  });

  test('a reload that lands on the other instance within the grace produces neither event', async () => {
    const onA = await tab(A.url, 'c4', WS);
    await waitFor(() => receiver.of('user.online', 'c4').length === 1, { message: 'user.online for c4' });
    onA.close();
    await sleep(50);
    const onB = await tab(B.url, 'c4', WS);
    await sleep(GRACE_MS + 400);
    assert.equal(receiver.of('user.online', 'c4').length, 1);
    assert.equal(receiver.of('user.offline', 'c4').length, 0);
    onB.close();
    await waitFor(() => receiver.of('user.offline', 'c4').length === 1, { message: 'user.offline for c4' });
  });

  test('an instance stalled past its TTL is swept (offline), and its users arrive again when it resumes', async () => {
    const socket = await tab(A.url, 'c5', WS);
    await waitFor(() => receiver.of('user.online', 'c5').length === 1, { message: 'user.online for c5' });
    A.proc.child.kill('SIGSTOP');
    try {
      await waitFor(() => receiver.of('user.offline', 'c5').length === 1, { timeout: 5000, message: 'user.offline for c5 while A is stalled' });
    } finally {
      A.proc.child.kill('SIGCONT');
    }
    // At-least-once: A finds it was swept and says the user is online again.
    await waitFor(() => receiver.of('user.online', 'c5').length === 2, { timeout: 8000, message: 'user.online again for c5' });
    socket.close();
    await waitFor(() => receiver.of('user.offline', 'c5').length === 2, { message: 'user.offline for c5 at the end' });
  });

  test('an instance killed with a user connected: offline from the survivor within the bound', async () => {
    const socket = await tab(A.url, 'c3', WS);
    await waitFor(() => receiver.of('user.online', 'c3').length === 1, { message: 'user.online for c3' });
    const killedAt = Date.now();
    await A.stop('SIGKILL');
    socket.close();
    // instance_ttl_ms (1.5 s) + a third of it, plus delivery.
    await waitFor(() => receiver.of('user.offline', 'c3').length === 1, { timeout: 5000, message: 'user.offline for c3 after A died' });
    assert.ok(Date.now() - killedAt < 4000);
    await sleep(700);
    assert.equal(receiver.of('user.offline', 'c3').length, 1);
  });
});

describe('webhooks, one cluster instance whose Redis link goes down', { skip: findRedisServer() ? false : 'redis-server is not on PATH' }, () => {
  let receiver;
  let fixture;
  let redis;
  let proxy;
  let A;
  const WS = ['websocket'];

  before(async () => {
    redis = await startRedis(await freePort());
    proxy = await pausableProxy(redis.port);
    receiver = await startReceiver();
    fixture = await startFixture();
    const env = hookEnv(receiver.url, {
      SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
      // A beat every 2 s; the liveness key outlives the outage, so nothing is swept.
      SIDECAR_WEBHOOKS__INSTANCE_TTL_MS: '6000',
    });
    A = await startSockgate({ upstreamUrl: fixture.url, env });
  });

  after(async () => {
    await A?.stop().catch(() => {});
    await proxy?.close().catch(() => {});
    await fixture?.stop().catch(() => {});
    redis?.kill('SIGKILL');
    await receiver?.close();
  });

  test('connects and disconnects while the link is down are recorded and reported once it is back', async () => {
    const leaving = await tab(A.url, 'd1', WS);
    await waitFor(() => receiver.of('user.online', 'd1').length === 1, { message: 'user.online for d1' });
    proxy.pause();
    let arriving;
    try {
      await waitFor(async () => (await publishApi(A.publishSocket, 'GET', '/readyz')).status === 503, {
        timeout: 5000,
        message: "A's Redis link marked down",
      });
      arriving = await tab(A.url, 'd2', WS);
      const passing = await tab(A.url, 'd3', WS);
      leaving.close();
      passing.close();
      await sleep(GRACE_MS + 400);
      assert.equal(receiver.of('user.online', 'd2').length, 0, 'nothing is decided while Redis cannot record it');
      assert.equal(receiver.of('user.offline', 'd1').length, 0, 'nothing is decided while Redis cannot record it');
    } finally {
      proxy.resume();
    }
    await waitFor(() => receiver.of('user.online', 'd2').length === 1 && receiver.of('user.offline', 'd1').length === 1, {
      timeout: 8000,
      message: 'user.online for d2 and user.offline for d1 once Redis answers again',
    });
    await sleep(2500); // a beat more: nothing is sent twice
    assert.equal(receiver.of('user.online', 'd2').length, 1);
    assert.equal(receiver.of('user.offline', 'd1').length, 1);
    assert.deepEqual(
      receiver.events.filter((e) => e.userId === 'd3'),
      [],
      'a user who came and went during the outage: neither event',
    );
    arriving.close();
    await waitFor(() => receiver.of('user.offline', 'd2').length === 1, { message: 'user.offline for d2 at the end' });
  });
});

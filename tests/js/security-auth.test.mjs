// Issue 18: nobody connects as someone else, nobody unauthenticated can exhaust sockgate.
// Every attack is made at the wire level: raw HTTP/1.1 over TCP, h2c (node:http2), raw
// Engine.IO polling / WebSocket, or socket.io-client with crafted headers.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/security-auth.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';
import {
  REPO_ROOT,
  startStack,
  startFixture,
  startSockgate,
  fixtureControl,
  freePort,
  publishApi,
  client,
  connect,
  connectError,
  refusedWith,
  nextEvent,
  closeAll,
  withTimeout,
  waitFor,
  sleep,
  rssKiB,
} from './harness.mjs';

const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
const WebSocket = fixtureRequire('ws');

let s; // shared stack with the default test configuration

before(async () => {
  s = await startStack();
});

after(async () => {
  await s?.stop();
});

// ---------------------------------------------------------------------------
// Wire-level helpers
// ---------------------------------------------------------------------------

/**
 * One HTTP/1.1 request on its own TCP connection, written byte for byte: `headers` is a list
 * of [name, value] pairs, so a header may appear on several lines. Resolves
 * {status, headers, body} once the server closes (Connection: close).
 */
function rawHttp(port, { method = 'GET', target, headers = [], body = '', timeout = 10_000 }) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const chunks = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`${method} ${target}: no complete answer within ${timeout} ms`));
    }, timeout);
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('data', (c) => chunks.push(c));
    sock.on('end', () => {
      clearTimeout(timer);
      sock.destroy();
      const raw = Buffer.concat(chunks).toString('latin1');
      const split = raw.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`${method} ${target}: no response head in ${JSON.stringify(raw)}`));
      const [statusLine, ...lines] = raw.slice(0, split).split('\r\n');
      const hdrs = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        hdrs[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      let rest = raw.slice(split + 4);
      if (/chunked/i.test(hdrs['transfer-encoding'] || '')) {
        let out = '';
        for (;;) {
          const eol = rest.indexOf('\r\n');
          const size = parseInt(rest.slice(0, eol), 16);
          if (!size) break;
          out += rest.slice(eol + 2, eol + 2 + size);
          rest = rest.slice(eol + 2 + size + 2);
        }
        rest = out;
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers: hdrs, body: rest });
    });
    const lines = [`${method} ${target} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Connection: close'];
    for (const [name, value] of headers) lines.push(`${name}: ${value}`);
    if (method !== 'GET') lines.push('Content-Type: text/plain;charset=UTF-8', `Content-Length: ${Buffer.byteLength(body)}`);
    sock.write(`${lines.join('\r\n')}\r\n\r\n${body}`);
  });
}

const EIO = '/socket.io/?EIO=4&transport=polling';

/** Engine.IO polling handshake + Socket.IO CONNECT over raw HTTP/1.1; returns the session. */
async function pollingConnect(port, headers) {
  const open = await rawHttp(port, { target: EIO, headers });
  // Credentials the session route refuses get no session at all.
  if (open.status === 401) return { refused: 401, answer: open.body };
  assert.equal(open.status, 200, `handshake answered ${open.status} ${open.body}`);
  const { sid } = JSON.parse(open.body.slice(1));
  const sent = await rawHttp(port, { method: 'POST', target: `${EIO}&sid=${sid}`, headers, body: '40' });
  assert.equal(sent.status, 200, `CONNECT post answered ${sent.status} ${sent.body}`);
  const answer = await rawHttp(port, { target: `${EIO}&sid=${sid}`, headers });
  assert.equal(answer.status, 200, `poll answered ${answer.status} ${answer.body}`);
  return { sid, answer: answer.body };
}

/** Same over h2c (prior knowledge): `cookies` go out as separate `cookie` fields (crumbs). */
async function h2PollingConnect(url, cookies) {
  const session = http2.connect(url);
  session.on('error', () => {});
  const request = (method, p, body) =>
    withTimeout(
      new Promise((resolve, reject) => {
        const headers = { ':method': method, ':path': p, cookie: cookies };
        if (body !== undefined) headers['content-type'] = 'text/plain;charset=UTF-8';
        const req = session.request(headers);
        const chunks = [];
        let status;
        req.on('response', (h) => (status = h[':status']));
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => resolve({ status, body: Buffer.concat(chunks).toString() }));
        req.on('error', reject);
        req.end(body);
      }),
      10_000,
      `h2 ${method} ${p}`,
    );
  try {
    const open = await request('GET', EIO);
    assert.equal(open.status, 200, `h2 handshake answered ${open.status} ${open.body}`);
    const { sid } = JSON.parse(open.body.slice(1));
    const sent = await request('POST', `${EIO}&sid=${sid}`, '40');
    assert.equal(sent.status, 200, `h2 CONNECT post answered ${sent.status} ${sent.body}`);
    const answer = await request('GET', `${EIO}&sid=${sid}`);
    return { sid, answer: answer.body, close: () => session.close() };
  } catch (e) {
    session.close();
    throw e;
  }
}

async function presence(stack, userId) {
  const r = await stack.publishApi('GET', `/users/${encodeURIComponent(userId)}`);
  assert.equal(r.status, 200, r.text);
  return r.json.sockets;
}

/** Runs `count` async jobs, at most `width` at a time; resolves with their settled results. */
async function bounded(count, width, job) {
  const results = new Array(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < count) {
        const i = next++;
        results[i] = await job(i).then(
          (value) => ({ ok: true, value }),
          (error) => ({ ok: false, error }),
        );
      }
    }),
  );
  return results;
}

// ---------------------------------------------------------------------------
// 1. The session cache key is what the app saw
// ---------------------------------------------------------------------------

test('two Cookie lines: a client sending only the first line is not connected as alice', async () => {
  const alice = await pollingConnect(s.port, [
    ['Cookie', 'lang=en'],
    ['Cookie', 'sid=alice-token'],
  ]);
  assert.match(alice.answer, /^40\{"sid"/, `alice is connected: ${alice.answer}`);
  const mallory = await pollingConnect(s.port, [['Cookie', 'lang=en']]);
  assert.equal(mallory.refused, 401, `mallory must be refused: ${mallory.answer}`);
  assert.equal(await presence(s, 'alice'), 1, 'alice has exactly her own socket');
});

test('a refused first Cookie line does not poison the negative cache for the next user', async () => {
  const refused = await pollingConnect(s.port, [
    ['Cookie', 'theme=poison'],
    ['Cookie', 'sid=nobody-at-all'],
  ]);
  assert.equal(refused.refused, 401, `bogus session refused: ${refused.answer}`);
  const bob = await pollingConnect(s.port, [
    ['Cookie', 'theme=poison'],
    ['Cookie', 'sid=bob-token'],
  ]);
  assert.match(bob.answer, /^40\{"sid"/, `bob connects: ${bob.answer}`);
});

test('h2c cookie crumbs: bob sharing alice\'s first crumb is bob, not alice', async () => {
  const alice = await h2PollingConnect(s.url, ['lang=fr', 'sid=user-h2alice']);
  const bob = await h2PollingConnect(s.url, ['lang=fr', 'sid=user-h2bob']);
  try {
    assert.match(alice.answer, /^40\{"sid"/, `alice connects over h2c: ${alice.answer}`);
    assert.match(bob.answer, /^40\{"sid"/, `bob connects over h2c: ${bob.answer}`);
    assert.equal(await presence(s, 'h2bob'), 1, 'bob is bob');
    assert.equal(await presence(s, 'h2alice'), 1, 'alice has only her own socket');
  } finally {
    alice.close();
    bob.close();
  }
});

test('the session route gets every cookie crumb, joined with "; "', async () => {
  await s.control({ reset: true });
  const carol = await h2PollingConnect(s.url, ['a=1', 'sid=user-crumbs', 'b=2']);
  try {
    assert.match(carol.answer, /^40\{"sid"/, carol.answer);
    const { lastSessionHeaders } = await s.fixtureStats();
    assert.equal(lastSessionHeaders.cookie, 'a=1; sid=user-crumbs; b=2');
  } finally {
    carol.close();
  }
});

// ---------------------------------------------------------------------------
// 2. A kick sticks
// ---------------------------------------------------------------------------

test('a kick sticks: a reconnect 0.1 s after POST /users/{id}/disconnect asks the app again', async () => {
  await s.control({ reset: true });
  const first = await connect(s.url, { cookie: 'sid=user-kicked' });
  const gone = nextEvent(first, 'disconnect', 5000);
  await s.control({ logout: 'user-kicked' }); // the app ends the session, then kicks
  const kick = await s.publishApi('POST', '/users/kicked/disconnect');
  assert.equal(kick.status, 200, kick.text);
  await gone;
  await sleep(100);
  const again = client(s.url, { cookie: 'sid=user-kicked' });
  const outcome = await withTimeout(
    new Promise((resolve) => {
      again.once('connect', () => resolve('connected'));
      again.once('connect_error', (e) => resolve(`connect_error ${refusedWith(e)}`));
    }),
    5000,
    'reconnect after kick',
  );
  let leaked = null;
  if (outcome === 'connected') {
    const got = nextEvent(again, 'notification', 1000).catch(() => null);
    await s.publish({ userId: 'kicked', data: 'after the kick' });
    leaked = await got;
  }
  closeAll([first, again]);
  assert.equal(outcome, 'connect_error 401', `kicked user reconnected (got ${JSON.stringify(leaked)})`);
});

test('a kick during an in-flight session lookup is not undone by its (older) answer', async () => {
  await s.control({ reset: true, sessionDelayMs: 800 });
  try {
    const pending = connect(s.url, { cookie: 'sid=user-inflight' }, 10_000);
    await waitFor(async () => (await s.fixtureStats()).currentSessionCalls === 1, {
      message: 'the session lookup to be in flight',
    });
    const kick = await s.publishApi('POST', '/users/inflight/disconnect');
    assert.equal(kick.status, 200, kick.text);
    const sock = await pending;
    closeAll([sock]);
    const { sessionCalls } = await s.fixtureStats();
    assert.equal(sessionCalls, 2, 'the answer given before the kick was not trusted: the app was asked again');
  } finally {
    await s.control({ reset: true });
  }
});

test('cluster: a kick on instance A stops instance B from letting the user back in from its cache', {
  skip: findRedisServer() ? false : 'redis-server is not on PATH',
}, async () => {
  const fixture = await startFixture();
  const redisPort = await freePort();
  const redis = await startRedis(redisPort);
  const env = {
    SIDECAR_CLUSTER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
    SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
  };
  const [A, B] = await Promise.all([
    startSockgate({ upstreamUrl: fixture.url, env }),
    startSockgate({ upstreamUrl: fixture.url, env }),
  ]);
  const sockets = [];
  try {
    const first = await connect(B.url, { cookie: 'sid=user-ckick', transports: ['websocket'] });
    sockets.push(first);
    const gone = nextEvent(first, 'disconnect', 5000);
    await fixtureControl(fixture.url, { logout: 'user-ckick' }); // the app ends the session, then kicks on A
    const kick = await publishApi(A.publishSocket, 'POST', '/users/ckick/disconnect');
    assert.equal(kick.status, 200, kick.text);
    await gone; // the kick reached B's socket through Redis
    await sleep(100);
    const again = client(B.url, { cookie: 'sid=user-ckick', transports: ['websocket'] });
    sockets.push(again);
    const outcome = await withTimeout(
      new Promise((resolve) => {
        again.once('connect', () => resolve('connected'));
        again.once('connect_error', (e) => resolve(`connect_error ${refusedWith(e)}`));
      }),
      5000,
      'reconnect to B after the kick on A',
    );
    assert.equal(outcome, 'connect_error 401');
  } finally {
    closeAll(sockets);
    await Promise.all([A.stop(), B.stop()]);
    await fixture.stop();
    await redis.kill('SIGKILL').catch(() => {});
  }
});

// ---------------------------------------------------------------------------
// 3. The Engine.IO sid is not a bearer token
// ---------------------------------------------------------------------------

test('another user\'s cookie cannot poll or upgrade a polling session whose sid it knows', async () => {
  const aliceHeaders = [['Cookie', 'sid=alice-token']];
  const alice = await pollingConnect(s.port, aliceHeaders);
  assert.match(alice.answer, /^40/, alice.answer);
  // Mallory polls alice's session with her own cookie, and with none.
  for (const headers of [[['Cookie', 'sid=bob-token']], []]) {
    const poll = rawHttp(s.port, { target: `${EIO}&sid=${alice.sid}`, headers, timeout: 4000 });
    await sleep(100);
    await s.publish({ userId: 'alice', event: 'secret', data: 'for alice only' });
    const r = await poll;
    assert.equal(r.status, 403, `mallory's poll answered ${r.status} ${r.body}`);
    assert.doesNotMatch(r.body, /for alice only/);
    assert.match(r.body, /session/i);
  }
  // … nor upgrade it to WebSocket.
  const ws = new WebSocket(`ws://127.0.0.1:${s.port}/socket.io/?EIO=4&transport=websocket&sid=${alice.sid}`, {
    headers: { cookie: 'sid=bob-token' },
  });
  const result = await withTimeout(
    new Promise((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(`http ${res.statusCode}`));
      ws.on('open', () => resolve('open'));
      ws.on('error', (e) => resolve(`error ${e.message}`));
    }),
    5000,
    'websocket upgrade',
  );
  ws.terminate();
  assert.equal(result, 'http 403');
  // Alice's own polling still works.
  const own = rawHttp(s.port, { target: `${EIO}&sid=${alice.sid}`, headers: aliceHeaders });
  await sleep(100);
  await s.publish({ userId: 'alice', event: 'secret', data: 'for alice' });
  const r = await own;
  assert.equal(r.status, 200);
  assert.match(r.body, /for alice/);
  assert.doesNotMatch(s.sockgate.text(), new RegExp(alice.sid), 'the sid is never logged');
});

test('a polling session is bound to every credential header the session route sees, not only the cookie', async () => {
  // The app authenticates on a header of its own (configured in auth.forward_headers): a
  // request that shares the cookie but not that header is not the handshake's client.
  const st = await startStack({
    env: { SIDECAR_AUTH__FORWARD_HEADERS: '["cookie","user-agent","x-forwarded-for","x-tenant"]' },
  });
  try {
    const aliceHeaders = [['Cookie', 'sid=alice-token'], ['X-Tenant', 'alice-corp']];
    const alice = await pollingConnect(st.port, aliceHeaders);
    assert.match(alice.answer, /^40/, alice.answer);
    const poll = rawHttp(st.port, {
      target: `${EIO}&sid=${alice.sid}`,
      headers: [['Cookie', 'sid=alice-token'], ['X-Tenant', 'mallory-corp']],
      timeout: 4000,
    });
    await sleep(100);
    await st.publish({ userId: 'alice', event: 'secret', data: 'for alice only' });
    const r = await poll;
    assert.equal(r.status, 403, `a poll with another X-Tenant answered ${r.status} ${r.body}`);
    assert.doesNotMatch(r.body, /for alice only/);
    // A different User-Agent is not another client (Node's client sends none on its upgrade).
    const own = rawHttp(st.port, {
      target: `${EIO}&sid=${alice.sid}`,
      headers: [...aliceHeaders, ['User-Agent', 'another-agent']],
    });
    await sleep(100);
    await st.publish({ userId: 'alice', event: 'secret', data: 'for alice' });
    const mine = await own;
    assert.equal(mine.status, 200, mine.body);
    assert.match(mine.body, /for alice/);
  } finally {
    await st.stop();
  }
});

// ---------------------------------------------------------------------------
// 4. Bounded auth waits
// ---------------------------------------------------------------------------

test('auth waits are bounded: slot wait counts against auth.timeout_ms, waiting is capped', async () => {
  const slow = await startStack({
    env: {
      SIDECAR_AUTH__MAX_CONCURRENT: '2',
      SIDECAR_AUTH__TIMEOUT_MS: '2500',
      SIDECAR_AUTH__MAX_WAITING: '4',
    },
  });
  const sockets = [];
  try {
    await slow.control({ reset: true, sessionDelayMs: 1000 });
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => {
        const t0 = Date.now();
        const sock = client(slow.url, { cookie: `sid=user-slow${i}`, timeout: 30_000 });
        sockets.push(sock);
        return withTimeout(
          new Promise((resolve) => {
            sock.once('connect', () => resolve({ ok: true, ms: Date.now() - t0 }));
            sock.once('connect_error', (e) => resolve({ ok: false, status: refusedWith(e), ms: Date.now() - t0 }));
          }),
          30_000,
          `slow user ${i}`,
        );
      }),
    );
    const slowest = Math.max(...outcomes.map((o) => o.ms));
    assert.ok(slowest < 6000, `every handshake settles within auth.timeout_ms + margin; slowest ${slowest} ms`);
    const failures = outcomes.filter((o) => !o.ok);
    for (const f of failures) assert.equal(f.status, 503, JSON.stringify(f));
    assert.ok(outcomes.filter((o) => o.ok).length >= 2, JSON.stringify(outcomes));
    const fast = failures.filter((f) => f.ms < 1500).length;
    assert.ok(fast >= 10, `over auth.max_waiting the refusal is immediate: ${JSON.stringify(outcomes)}`);
  } finally {
    closeAll(sockets);
    await slow.stop();
  }
});

// ---------------------------------------------------------------------------
// 5. Connection slots
// ---------------------------------------------------------------------------

test('cookie-less handshakes are refused with 401 and take no slot: a real user still connects', async () => {
  const capped = await startStack({ env: { SIDECAR_REALTIME__MAX_CONNECTIONS: '100' } });
  try {
    const flood = await bounded(300, 30, () => rawHttp(capped.port, { target: EIO }));
    const statuses = flood.map((r) => (r.ok ? r.value.status : r.error.message));
    assert.ok(statuses.every((st) => st === 401), `statuses ${[...new Set(statuses)]}`);
    assert.match(flood[0].value.body, /credentials/i);
    const alice = await connect(capped.url, { cookie: 'sid=alice-token' });
    closeAll([alice]);
  } finally {
    await capped.stop();
  }
});

test('one user cannot take every socket: past realtime.max_sockets_per_user their CONNECT is refused, others still connect', async () => {
  const capped = await startStack({ env: { SIDECAR_REALTIME__MAX_SOCKETS_PER_USER: '3' } });
  const socks = [];
  try {
    const WS_ONLY = { transports: ['websocket'] };
    for (let i = 0; i < 3; i++) socks.push(await connect(capped.url, { cookie: 'sid=user-hog', ...WS_ONLY }));
    const refused = await connectError(capped.url, { cookie: 'sid=user-hog', ...WS_ONLY });
    assert.match(refused.message, /too many sockets for this user/);
    // Polling counts the same.
    const overPolling = await connectError(capped.url, { cookie: 'sid=user-hog', transports: ['polling'] });
    assert.match(overPolling.message, /too many sockets for this user/);
    socks.push(await connect(capped.url, { cookie: 'sid=user-other', ...WS_ONLY }));
    assert.equal((await capped.publish({ userId: 'hog', event: 'x', data: 1 })).recipients, 3);
    const metrics = await capped.publishApi('GET', '/metrics');
    assert.match(metrics.text, /sockgate_socket_rejects_total\{reason="per_user_limit"\} 2/);
    // A place frees when one closes.
    socks[0].close();
    await waitFor(async () => (await capped.publishApi('GET', '/users/hog')).json.sockets === 2, { message: 'one of hog\'s sockets gone' });
    socks.push(await connect(capped.url, { cookie: 'sid=user-hog', ...WS_ONLY }));
  } finally {
    closeAll(socks);
    await capped.stop();
  }
});

test('handshakes that never CONNECT are capped (realtime.max_pending_connections) and closed after realtime.connect_timeout_ms', async () => {
  const pend = await startStack({
    env: {
      SIDECAR_REALTIME__MAX_PENDING_CONNECTIONS: '20',
      SIDECAR_REALTIME__CONNECT_TIMEOUT_MS: '1500',
      SIDECAR_AUTH__TIMEOUT_MS: '1000',
    },
  });
  try {
    const headers = [['Cookie', 'sid=user-never-connects']];
    const flood = await bounded(40, 10, () => rawHttp(pend.port, { target: EIO, headers }));
    const ok = flood.filter((r) => r.ok && r.value.status === 200);
    const refused = flood.filter((r) => r.ok && r.value.status === 503);
    assert.equal(ok.length, 20, 'max_pending_connections handshakes are let in');
    assert.equal(refused.length, 20, 'the others get 503');
    assert.match(refused[0].value.body, /max_pending_connections|pending/);
    const sid = JSON.parse(ok[0].value.body.slice(1)).sid;
    await sleep(2500);
    // The abandoned session is gone: its sid is unknown now.
    const r = await rawHttp(pend.port, { target: `${EIO}&sid=${sid}`, headers, timeout: 4000 });
    assert.ok(r.status === 400 || r.status === 403, `poll of a timed-out session: ${r.status} ${r.body}`);
    // … and the pending places are free again: a real user connects.
    const alice = await connect(pend.url, { cookie: 'sid=alice-token' });
    closeAll([alice]);
  } finally {
    await pend.stop();
  }
});

// ---------------------------------------------------------------------------
// 6. Abandoned handshakes keep no big headers
// ---------------------------------------------------------------------------

test('a credential over auth.max_credential_bytes is refused with 431; a flood of them costs no memory', async () => {
  const big = await startStack({ env: { SIDECAR_REALTIME__MAX_CONNECTIONS: '5000' } });
  try {
    const cookie = `sid=user-big; pad=${'x'.repeat(60 * 1024)}`;
    const one = await rawHttp(big.port, { target: EIO, headers: [['Cookie', cookie]] });
    assert.equal(one.status, 431, `${one.status} ${one.body.slice(0, 200)}`);
    assert.match(one.body, /auth\.max_credential_bytes/);
    const before = rssKiB(big.sockgate.pid);
    const flood = await bounded(1000, 20, () => rawHttp(big.port, { target: EIO, headers: [['Cookie', cookie]] }));
    assert.ok(flood.every((r) => r.ok && r.value.status === 431));
    const afterFlood = rssKiB(big.sockgate.pid);
    console.log(`RSS ${(before / 1024).toFixed(1)} → ${(afterFlood / 1024).toFixed(1)} MiB (1000 refused 60 KB-cookie handshakes)`);
    assert.ok(
      afterFlood - before < 30 * 1024,
      `RSS grew ${((afterFlood - before) / 1024).toFixed(1)} MiB for 1000 refused 60 KB-cookie handshakes`,
    );
  } finally {
    await big.stop();
  }
});

test('abandoned handshakes with credentials under the cap are freed after the connect timeout', async () => {
  const ab = await startStack({
    env: {
      SIDECAR_REALTIME__MAX_PENDING_CONNECTIONS: '2000',
      SIDECAR_REALTIME__CONNECT_TIMEOUT_MS: '2000',
      SIDECAR_AUTH__TIMEOUT_MS: '1000',
    },
  });
  try {
    const cookie = `sid=user-abandon; pad=${'y'.repeat(15 * 1024)}`;
    const flood = () => bounded(1500, 20, () => rawHttp(ab.port, { target: EIO, headers: [['Cookie', cookie]] }));
    const mib = (k) => (k / 1024).toFixed(1);
    const before = rssKiB(ab.sockgate.pid);
    const first = await flood();
    assert.ok(first.every((r) => r.ok && r.value.status === 200));
    const afterFirst = rssKiB(ab.sockgate.pid);
    await sleep(4000); // realtime.connect_timeout_ms = 2000, plus margin
    // Freed, not kept: a second flood fits in the pending places and in the memory the
    // first one used (the allocator keeps freed pages for reuse rather than returning them).
    const second = await flood();
    const statuses = second.map((r) => (r.ok ? r.value.status : r.error.message));
    assert.ok(statuses.every((st) => st === 200), `second flood: ${[...new Set(statuses)]}`);
    const afterSecond = rssKiB(ab.sockgate.pid);
    const line = `RSS ${mib(before)} → ${mib(afterFirst)} → ${mib(afterSecond)} MiB (two floods of 1500 abandoned 15 KB-cookie handshakes, 4 s apart)`;
    console.log(line);
    // Generous bounds for a loaded CI machine: measured +30 MiB for the first flood (≈ 20 KiB
    // per pending polling session) and +0–2 MiB for the second.
    assert.ok(afterSecond - afterFirst < 15 * 1024, line);
    assert.ok(afterSecond - before < 80 * 1024, line);
  } finally {
    await ab.stop();
  }
});

// ---------------------------------------------------------------------------
// 14. Internal names cannot be published to
// ---------------------------------------------------------------------------

test('publishing to sockgate: rooms or with sockgate/Socket.IO event names is refused naming the field', async () => {
  for (const [msg, field] of [
    [{ room: 'sockgate:connecting:alice', data: 1 }, 'room'],
    [{ room: 'sockgate:anything', data: 1 }, 'room'],
    [{ userId: 'alice', event: 'recovery_failed', data: 1 }, 'event'],
    [{ userId: 'alice', event: 'connect_error', data: 1 }, 'event'],
    [{ userId: 'alice', event: 'newListener', data: 1 }, 'event'],
  ]) {
    const r = await s.publishApi('POST', '/publish', msg);
    assert.equal(r.status, 400, `${JSON.stringify(msg)} answered ${r.status} ${r.text}`);
    assert.match(r.text, new RegExp(`\`${field}\``), r.text);
  }
  const batch = await s.publishApi('POST', '/publish/batch', {
    messages: [{ userId: 'a' }, { room: 'sockgate:connecting:a' }],
  });
  assert.equal(batch.status, 400, batch.text);
  assert.match(batch.text, /messages\[1\]\.room/);
});

// ---------------------------------------------------------------------------
// Issue 29 item 5: what a socket keeps of its CONNECT
// ---------------------------------------------------------------------------

/** Opens `count` WebSocket sockets of distinct users (20 at a time) with `auth`. */
async function socketsWithAuth(url, tag, count, auth) {
  const opened = await bounded(count, 20, (i) =>
    connect(url, { cookie: `sid=user-${tag}${i}`, transports: ['websocket'], auth }),
  );
  const failed = opened.filter((r) => !r.ok);
  assert.equal(failed.length, 0, `${failed.length} sockets failed: ${failed[0]?.error?.message}`);
  return opened.map((r) => r.value);
}

test('a socket keeps nothing of its CONNECT auth: 200 sockets with a 15 KB auth cost what 200 with a small one do', async () => {
  const COUNT = 200;
  const st = await startStack({ env: { SIDECAR_REALTIME__MAX_AUTH_BYTES: '16384' } });
  const held = [];
  try {
    closeAll(await socketsWithAuth(st.url, 'warm', 20, { offsets: {} }));
    await sleep(300);
    const before = rssKiB(st.sockgate.pid);
    held.push(...(await socketsWithAuth(st.url, 'small', COUNT, { offsets: {} })));
    await sleep(300);
    const small = rssKiB(st.sockgate.pid);
    held.push(...(await socketsWithAuth(st.url, 'big', COUNT, { offsets: {}, pad: 'x'.repeat(15_000) })));
    await sleep(300);
    const big = rssKiB(st.sockgate.pid);
    const perSmall = (small - before) / COUNT;
    const perBig = (big - small) / COUNT;
    const line = `per socket: ${perSmall.toFixed(1)} KiB with a small auth, ${perBig.toFixed(1)} KiB with a 15 KB auth (RSS ${before} → ${small} → ${big} KiB)`;
    console.log(line);
    // Measured before the fix: +15 KiB per socket for the 15 KB auth; after, within noise.
    assert.ok(perBig - perSmall < 5, line);
  } finally {
    closeAll(held);
    await st.stop();
  }
});

test('a CONNECT whose auth is over realtime.max_auth_bytes is refused with a connect_error and counted; a small auth connects', async () => {
  // Below the message limits, so that the auth bound is what refuses it.
  const st = await startStack({ env: { SIDECAR_REALTIME__MAX_AUTH_BYTES: '8192' } });
  try {
    for (const transport of ['websocket', 'polling']) {
      const err = await connectError(st.url, {
        cookie: 'sid=user-bigauth',
        transports: [transport],
        auth: { offsets: {}, pad: 'x'.repeat(9000) },
      });
      assert.match(err.message, /auth is \d+ bytes, over realtime\.max_auth_bytes \(8192\)/, transport);
    }
    const metrics = await st.publishApi('GET', '/metrics');
    assert.match(metrics.text, /sockgate_socket_rejects_total\{reason="auth_too_large"\} 2/);
    const ok = await connect(st.url, { cookie: 'sid=user-bigauth', transports: ['websocket'], auth: { offsets: {} } });
    ok.close();
  } finally {
    await st.stop();
  }
});

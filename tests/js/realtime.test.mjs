// Socket.IO behaviour of sockgate, driven by the real socket.io-client.
//   node --test tests/js/realtime.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startStack,
  freePort,
  client,
  connect,
  connectError,
  refusedWith,
  nextEvent,
  recorder,
  closeAll,
  withTimeout,
  waitFor,
  sleep,
} from './harness.mjs';

let s; // shared fixture + sockgate with the default test configuration

before(async () => {
  s = await startStack();
});

after(async () => {
  await s?.stop();
});

/** Raw HTTP GET with arbitrary headers (fetch may refuse to set Origin). */
function rawGet(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString() }),
      );
    });
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}

/** Publishes `data` to `target` and waits for `socket` to receive it as `event`. */
async function publishAndReceive(socket, target, data, event = 'notification') {
  const got = nextEvent(socket, event);
  const res = await s.publish({ ...target, event, data });
  assert.equal(res.ok, true);
  let received;
  try {
    received = await got;
  } catch (e) {
    throw new Error(`${e.message}; publish to ${JSON.stringify(target)} answered ${JSON.stringify(res)}`);
  }
  assert.deepEqual(received, data);
  return res;
}

test('valid cookie (alice) connects and receives publishes to userId "alice"', async () => {
  const alice = await connect(s.url, { cookie: 'sid=alice-token' });
  try {
    assert.equal(alice.connected, true);
    const res = await publishAndReceive(alice, { userId: 'alice' }, { hello: 'alice', n: 1 });
    assert.equal(res.recipients, 1);
    await publishAndReceive(alice, { room: 'user:alice' }, { via: 'room' });
  } finally {
    closeAll([alice]);
  }
});

test('bob (numeric userId 42 from the session route) joins user:42', async () => {
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const res = await publishAndReceive(bob, { userId: 42 }, { hello: 'bob' });
    assert.equal(res.recipients, 1);
    await publishAndReceive(bob, { userId: '42' }, { as: 'string id' });
    await publishAndReceive(bob, { room: 'user:42' }, { as: 'room' });
  } finally {
    closeAll([bob]);
  }
});

test('cookie header with other cookies around sid still authenticates', async () => {
  const sock = await connect(s.url, { cookie: 'theme=dark; sid=alice-token; lang=en' });
  try {
    await publishAndReceive(sock, { userId: 'alice' }, 'with other cookies');
  } finally {
    closeAll([sock]);
  }
});

test('no cookie → the handshake itself is refused (401), before any session exists', async () => {
  const raw = await rawGet(`${s.url}/socket.io/?EIO=4&transport=polling`);
  assert.equal(raw.status, 401, `status ${raw.status} body ${raw.text}`);
  assert.match(raw.text, /no credentials/);
  const err = await connectError(s.url, { transports: ['polling'] });
  assert.equal(err.description, 401, `connect_error ${err.message} description ${err.description}`);
});

test('bad cookie → the handshake is refused with 401 (connect_error), no session', async () => {
  for (const cookie of ['sid=nope', 'other=alice-token', 'sid=']) {
    const err = await connectError(s.url, { cookie });
    assert.equal(refusedWith(err), 401, `cookie ${JSON.stringify(cookie)}: ${err.message}`);
  }
  const raw = await rawGet(`${s.url}/socket.io/?EIO=4&transport=polling`, { cookie: 'sid=nope' });
  assert.equal(raw.status, 401, `status ${raw.status} body ${raw.text}`);
  assert.match(raw.text, /unauthorized/);
});

test('unauthorized on websocket-only transport too', async () => {
  const err = await connectError(s.url, { cookie: 'sid=nope-ws', transports: ['websocket'] });
  assert.equal(refusedWith(err), 401, err.message);
});

test('session route answering 500 → handshake refused with 503 "session unavailable"', async () => {
  await s.control({ reset: true, sessionStatus: 500 });
  try {
    const err = await connectError(s.url, { cookie: 'sid=user-status500' });
    assert.equal(refusedWith(err), 503, err.message);
    const raw = await rawGet(`${s.url}/socket.io/?EIO=4&transport=polling`, { cookie: 'sid=user-status500' });
    assert.equal(raw.status, 503);
    assert.match(raw.text, /session unavailable/);
    const stats = await s.fixtureStats();
    assert.ok(stats.sessionCalls >= 1, 'sockgate asked the session route');
  } finally {
    await s.control({ reset: true });
  }
  // A transient failure must not be cached as "unauthorized": the same cookie works now.
  const ok = await connect(s.url, { cookie: 'sid=user-status500' });
  closeAll([ok]);
});

test('app down (upstream port closed) → handshake refused with 503 "session unavailable"', async () => {
  const closedPort = await freePort();
  const down = await startStack({ upstreamUrl: `http://127.0.0.1:${closedPort}` });
  try {
    const err = await connectError(down.url, { cookie: 'sid=alice-token' });
    assert.equal(refusedWith(err), 503, err.message);
    const errWs = await connectError(down.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
    assert.equal(refusedWith(errWs), 503, errWs.message);
  } finally {
    await down.stop();
  }
});

test('session route slower than auth.timeout_ms → handshake refused with 503 "session unavailable"', async () => {
  const slow = await startStack({
    env: { SIDECAR_AUTH__TIMEOUT_MS: '300' },
    fixtureEnv: { SESSION_DELAY_MS: '3000' },
  });
  try {
    const t0 = Date.now();
    const err = await connectError(slow.url, { cookie: 'sid=alice-token' });
    assert.equal(refusedWith(err), 503, err.message);
    assert.ok(Date.now() - t0 < 2500, `failed after ${Date.now() - t0} ms, expected ~300 ms`);
  } finally {
    await slow.stop();
  }
});

test('polling-only transport connects and receives a publish', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-poll', transports: ['polling'] });
  try {
    assert.equal(sock.io.engine.transport.name, 'polling');
    await publishAndReceive(sock, { userId: 'poll' }, { t: 'polling' });
    assert.equal(sock.io.engine.transport.name, 'polling');
  } finally {
    closeAll([sock]);
  }
});

test('websocket-only transport connects and receives a publish', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-wsonly', transports: ['websocket'] });
  try {
    assert.equal(sock.io.engine.transport.name, 'websocket');
    await publishAndReceive(sock, { userId: 'wsonly' }, { t: 'websocket' });
  } finally {
    closeAll([sock]);
  }
});

test('default transports: polling then upgrade to websocket, then receives a publish', async () => {
  const sock = client(s.url, { cookie: 'sid=user-upgrade' });
  try {
    // The engine exists as soon as io() returns (autoConnect); listen before it can upgrade.
    const engine = sock.io.engine;
    assert.ok(engine, 'engine created');
    assert.equal(engine.transport.name, 'polling', 'starts with polling');
    const upgraded = withTimeout(
      new Promise((resolve, reject) => {
        engine.once('upgrade', (transport) => resolve(transport.name));
        engine.once('upgradeError', (err) => reject(new Error(`upgradeError: ${err.message}`)));
      }),
      5000,
      'engine "upgrade" event',
    );
    await withTimeout(
      new Promise((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
      }),
      5000,
      'connect',
    );
    assert.equal(await upgraded, 'websocket');
    assert.equal(sock.io.engine.transport.name, 'websocket');
    await publishAndReceive(sock, { userId: 'upgrade' }, { t: 'upgraded' });
  } finally {
    closeAll([sock]);
  }
});

test('a publish issued right after the client saw "connect" reaches it', async () => {
  // The user room must be joined before the CONNECT ack is sent; otherwise an app that
  // publishes as soon as the browser reports it is connected loses the message.
  const misses = [];
  for (let i = 0; i < 20; i++) {
    const transports = i % 2 ? ['websocket'] : ['polling'];
    const sock = await connect(s.url, { cookie: `sid=user-race${i}`, transports });
    try {
      const got = nextEvent(sock, 'notification', 3000);
      const res = await s.publish({ userId: `race${i}`, data: i });
      if (res.recipients !== 1) misses.push(`#${i} ${transports[0]}: recipients ${res.recipients}`);
      else assert.equal(await got, i);
    } finally {
      closeAll([sock]);
    }
  }
  assert.deepEqual(misses, [], 'every publish right after connect found the socket in its room');
});

test('50 concurrent connections with one cookie → exactly one session call', async () => {
  await s.control({ reset: true, sessionDelayMs: 300 });
  const sockets = [];
  try {
    const conns = [];
    for (let i = 0; i < 50; i++) conns.push(connect(s.url, { cookie: 'sid=user-coalesce' }, 15_000));
    const results = await Promise.allSettled(conns);
    for (const r of results) if (r.status === 'fulfilled') sockets.push(r.value);
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed, [], 'all 50 connect');
    const stats = await s.fixtureStats();
    assert.equal(stats.sessionCalls, 1, 'one coalesced session call');
    assert.equal(stats.maxConcurrentSessionCalls, 1);
    // And they are all in user:coalesce.
    const recs = sockets.map(recorder);
    const res = await s.publish({ userId: 'coalesce', event: 'ping', data: 'all' });
    assert.equal(res.recipients, 50);
    await Promise.all(recs.map((r) => r.waitCount(1)));
  } finally {
    closeAll(sockets);
    await s.control({ reset: true });
  }
});

test('60 sockets over 6 distinct cookies → exactly 6 session calls', async () => {
  await s.control({ reset: true, sessionDelayMs: 200 });
  const sockets = [];
  try {
    const conns = [];
    for (let i = 0; i < 60; i++) conns.push(connect(s.url, { cookie: `sid=user-m${i % 6}` }, 15_000));
    const results = await Promise.allSettled(conns);
    for (const r of results) if (r.status === 'fulfilled') sockets.push(r.value);
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed, [], 'all 60 connect');
    const stats = await s.fixtureStats();
    assert.equal(stats.sessionCalls, 6);
    for (let m = 0; m < 6; m++) {
      const res = await s.publish({ userId: `m${m}`, data: m });
      assert.equal(res.recipients, 10, `user m${m} has 10 sockets`);
    }
  } finally {
    closeAll(sockets);
    await s.control({ reset: true });
  }
});

test('a refused cookie is cached (negative TTL): a retry does not call the session route', async () => {
  await s.control({ reset: true });
  try {
    for (let i = 0; i < 3; i++) {
      const err = await connectError(s.url, { cookie: 'sid=neg-cache-bad' });
      assert.equal(refusedWith(err), 401, err.message);
    }
    const stats = await s.fixtureStats();
    assert.equal(stats.sessionCalls, 1, 'one call for three refused handshakes');
  } finally {
    await s.control({ reset: true });
  }
});

test('auth.max_concurrent bounds in-flight session calls', async () => {
  const capped = await startStack({ env: { SIDECAR_AUTH__MAX_CONCURRENT: '2' } });
  const sockets = [];
  try {
    await capped.control({ reset: true, sessionDelayMs: 150 });
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => connect(capped.url, { cookie: `sid=user-cap${i}` }, 15_000)),
    );
    for (const r of results) if (r.status === 'fulfilled') sockets.push(r.value);
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed, [], 'all 8 connect (queued, not refused)');
    const stats = await capped.fixtureStats();
    assert.equal(stats.sessionCalls, 8);
    assert.ok(
      stats.maxConcurrentSessionCalls <= 2,
      `max concurrent session calls ${stats.maxConcurrentSessionCalls} > 2`,
    );
  } finally {
    closeAll(sockets);
    await capped.stop();
  }
});

test('the session route receives the browser cookies, user agent, client address and host', async () => {
  await s.control({ reset: true });
  const sock = await connect(s.url, {
    cookie: 'sid=user-hdrs; extra=1',
    headers: { 'user-agent': 'sockgate-test/1', 'x-forwarded-for': '6.6.6.6' },
  });
  try {
    const stats = await s.fixtureStats();
    assert.ok(stats.lastSessionHeaders, 'session route was called');
    const h = stats.lastSessionHeaders;
    assert.match(h.cookie, /sid=user-hdrs/);
    assert.equal(h['user-agent'], 'sockgate-test/1');
    assert.equal(h['x-forwarded-for'], '127.0.0.1', 'the real client address, not a spoofed one');
    assert.equal(h.host, new URL(s.url).host);
  } finally {
    closeAll([sock]);
  }
});

test('revalidation disconnects a socket whose session was logged out', async () => {
  const rv = await startStack({
    env: {
      SIDECAR_AUTH__REVALIDATE_INTERVAL_MS: '500',
      SIDECAR_AUTH__CACHE_TTL_MS: '200',
    },
  });
  try {
    const gone = await connect(rv.url, { cookie: 'sid=user-rv' });
    const stays = await connect(rv.url, { cookie: 'sid=user-rv-keep' });
    const disconnected = nextEvent(gone, 'disconnect', 3500);
    await rv.control({ logout: 'user-rv' });
    const t0 = Date.now();
    const reason = await disconnected;
    assert.ok(Date.now() - t0 <= 3500);
    assert.equal(gone.connected, false);
    assert.ok(typeof reason === 'string', `disconnect reason ${reason}`);
    // The still-valid session survives revalidation rounds.
    await sleep(1200);
    assert.equal(stays.connected, true, 'valid session stays connected');
    const got = nextEvent(stays, 'notification');
    await rv.publish({ userId: 'rv-keep', data: 'still here' });
    assert.equal(await got, 'still here');
    // And the logged-out cookie can no longer connect.
    const err = await connectError(rv.url, { cookie: 'sid=user-rv' });
    assert.equal(refusedWith(err), 401, err.message);
    closeAll([gone, stays]);
  } finally {
    await rv.stop();
  }
});

test('wrong Origin → handshake refused with HTTP 403', async () => {
  const raw = await rawGet(`${s.url}/socket.io/?EIO=4&transport=polling`, {
    origin: 'http://evil.test',
    cookie: 'sid=alice-token',
  });
  assert.equal(raw.status, 403, `status ${raw.status} body ${raw.text}`);

  const err = await connectError(s.url, {
    cookie: 'sid=alice-token',
    origin: 'http://evil.test',
    transports: ['polling'],
  });
  assert.notEqual(err.message, 'unauthorized');
  assert.equal(err.description, 403, `polling connect_error ${err.message} description ${err.description}`);

  const errWs = await connectError(s.url, {
    cookie: 'sid=alice-token',
    origin: 'http://evil.test',
    transports: ['websocket'],
  });
  assert.ok(errWs instanceof Error);
});

test('allowed-list Origin is accepted', async () => {
  const a = await connect(s.url, { cookie: 'sid=alice-token', origin: 'http://allowed.test' });
  const b = await connect(s.url, {
    cookie: 'sid=alice-token',
    origin: 'http://allowed.test',
    transports: ['websocket'],
  });
  closeAll([a, b]);
});

test('same-host Origin is accepted', async () => {
  const origin = `http://127.0.0.1:${s.port}`;
  const a = await connect(s.url, { cookie: 'sid=alice-token', origin });
  const b = await connect(s.url, { cookie: 'sid=alice-token', origin, transports: ['websocket'] });
  closeAll([a, b]);
});

test('GET /socket.io-admin is proxied to the app, not answered by sockgate', async () => {
  for (const p of ['/socket.io-admin', '/socket.io-admin/x?y=1']) {
    const res = await fetch(`${s.url}${p}`);
    assert.equal(res.status, 200, p);
    assert.equal(await res.text(), 'app socket.io-admin', p);
  }
  const root = await fetch(`${s.url}/`);
  assert.equal(root.status, 200);
  assert.equal(await root.text(), '<h1>fixture</h1>');
});

test('client-emitted events are ignored; the socket still receives publishes', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-chatty' });
  try {
    const rec = recorder(sock);
    sock.emit('hello', { a: 1 });
    sock.emit('message', 'text');
    // (Binary attachments and messages over realtime.max_ws_message_bytes close the socket
    // instead: tests/edge.rs.)
    sock.emit('sized', 'x'.repeat(8_000));
    sock.emit('with-ack', 1, () => {});
    sock.send('plain send');
    for (let i = 0; i < 100; i++) sock.emit('flood', i);
    await publishAndReceive(sock, { userId: 'chatty' }, { after: 'emits' });
    assert.equal(sock.connected, true);
    // Nothing was echoed back to the client.
    assert.deepEqual(
      rec.events.map((e) => e.event),
      ['notification'],
    );
    // sockgate is still healthy for others.
    const other = await connect(s.url, { cookie: 'sid=alice-token' });
    closeAll([other]);
    const health = await s.publishApi('GET', '/health');
    assert.equal(health.status, 200);
    assert.equal(health.json?.ok, true, health.text);
  } finally {
    closeAll([sock]);
  }
});

test('stats reflect connected sockets', async () => {
  const a = await connect(s.url, { cookie: 'sid=user-st1' });
  const b = await connect(s.url, { cookie: 'sid=user-st2' });
  try {
    const r = await s.publishApi('GET', '/stats');
    assert.equal(r.status, 200);
    for (const k of ['connections', 'users', 'rooms', 'publishes', 'deliveries']) {
      assert.equal(typeof r.json[k], 'number', `stats.${k}`);
    }
    assert.ok(r.json.connections >= 2);
    assert.ok(r.json.users >= 2);
  } finally {
    closeAll([a, b]);
  }
  // After both disconnect, the count drops (bounded wait: disconnect is async server-side).
  await waitFor(
    async () => {
      const u = await s.publishApi('GET', '/users/st1');
      return u.json && u.json.online === false;
    },
    { timeout: 3000, message: 'user st1 offline after close' },
  );
});

// The publish API (HTTP/1.1 over a Unix socket) and the publish socket's lifecycle.
//   node --test tests/js/publish.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import {
  startStack,
  startFixture,
  startSockgate,
  spawnSockgate,
  freePort,
  tmpDir,
  connect,
  nextEvent,
  recorder,
  closeAll,
  publishApi,
  waitFor,
  withTimeout,
  sleep,
} from './harness.mjs';
import { metrics } from './fault-helpers.mjs';

let s; // shared fixture + sockgate

before(async () => {
  s = await startStack();
});

after(async () => {
  await s?.stop();
});

const api = (method, p, body, opts) => s.publishApi(method, p, body, opts);

/** Publishes a marker to `userId` and waits until `rec` saw it: everything sent before it has arrived. */
async function fence(rec, userId, tag) {
  await s.publish({ userId, event: 'marker', data: tag });
  await rec.waitFor((e) => e.event === 'marker' && e.args[0] === tag, `marker ${tag} for ${userId}`);
}

/** The fields of `obj` named in `expected` (extra fields in sockgate's answers are fine). */
function pick(obj, expected) {
  if (!obj || typeof obj !== 'object') return obj;
  return Object.fromEntries(Object.keys(expected).filter((k) => k in obj).map((k) => [k, obj[k]]));
}

/** deepEqual on the fields of `expected` only. */
function assertFields(actual, expected, message) {
  assert.deepEqual(pick(actual, expected), expected, message ?? JSON.stringify(actual));
}

/** GET /users/{id} until it reports `sockets` (bounded); returns the last JSON seen. */
async function untilUser(id, sockets, timeout = 3000) {
  let last;
  try {
    await waitFor(
      async () => {
        const r = await api('GET', `/users/${encodeURIComponent(id)}`);
        last = r.json ?? r.text;
        return r.status === 200 && r.json?.sockets === sockets;
      },
      { timeout, message: `GET /users/${id} to report ${sockets} sockets` },
    );
  } catch {
    // fall through: the caller's assertion shows the last answer
  }
  return last;
}

function assertError(r, status, fieldRe) {
  assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
  assert.ok(r.json, `error body is JSON: ${r.text}`);
  assert.equal(r.json.ok, false, r.text);
  assert.equal(typeof r.json.error, 'string', r.text);
  if (fieldRe) assert.match(r.json.error, fieldRe);
}

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------
test('exact delivery: alice gets exactly her events, bob gets nothing', async () => {
  const alice = await connect(s.url, { cookie: 'sid=alice-token' });
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const ra = recorder(alice);
    const rb = recorder(bob);
    const payloads = [{ n: 1 }, 'two', [3, { three: true }], 4, null, { nested: { deep: ['x'] } }];
    for (const data of payloads) {
      const res = await s.publish({ userId: 'alice', data });
      assertFields(res, { ok: true, recipients: 1 });
    }
    await fence(ra, 'alice', 'a-end');
    await fence(rb, 42, 'b-end'); // bob's marker published after all of alice's events
    await sleep(300); // bounded grace for any stray late delivery
    assert.deepEqual(
      ra.events,
      [...payloads.map((d) => ({ event: 'notification', args: [d] })), { event: 'marker', args: ['a-end'] }],
    );
    assert.deepEqual(rb.events, [{ event: 'marker', args: ['b-end'] }]);
  } finally {
    closeAll([alice, bob]);
  }
});

test('publish to a user with no sockets → ok with 0 recipients', async () => {
  const res = await s.publish({ userId: 'nobody-here', data: 1 });
  assertFields(res, { ok: true, recipients: 0 });
});

test('userIds target reaches each listed user (strings and numbers)', async () => {
  const a = await connect(s.url, { cookie: 'sid=user-ua' });
  const b = await connect(s.url, { cookie: 'sid=user-ub' });
  const c = await connect(s.url, { cookie: 'sid=user-uc' });
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const [ra, rb, rc, rbob] = [a, b, c, bob].map(recorder);
    const res = await s.publish({ userIds: ['ua', 'ub', 42], event: 'multi', data: { m: 1 } });
    assert.equal(res.ok, true);
    assert.equal(res.recipients, 3);
    await ra.waitCount(1);
    await rb.waitCount(1);
    await rbob.waitCount(1);
    await fence(rc, 'uc', 'c-end');
    assert.deepEqual(ra.events, [{ event: 'multi', args: [{ m: 1 }] }]);
    assert.deepEqual(rb.events, [{ event: 'multi', args: [{ m: 1 }] }]);
    assert.deepEqual(rbob.events, [{ event: 'multi', args: [{ m: 1 }] }]);
    assert.deepEqual(rc.events, [{ event: 'marker', args: ['c-end'] }], 'uc was not targeted');
  } finally {
    closeAll([a, b, c, bob]);
  }
});

test('room target (user:alice)', async () => {
  const alice = await connect(s.url, { cookie: 'sid=alice-token' });
  const other = await connect(s.url, { cookie: 'sid=user-roomother' });
  try {
    const ra = recorder(alice);
    const ro = recorder(other);
    const res = await s.publish({ room: 'user:alice', event: 'roomy', data: 'r' });
    assertFields(res, { ok: true, recipients: 1 });
    await ra.waitCount(1);
    await fence(ro, 'roomother', 'o-end');
    assert.deepEqual(ra.events, [{ event: 'roomy', args: ['r'] }]);
    assert.deepEqual(ro.events, [{ event: 'marker', args: ['o-end'] }]);
    const empty = await s.publish({ room: 'no-such-room', data: 1 });
    assertFields(empty, { ok: true, recipients: 0 });
  } finally {
    closeAll([alice, other]);
  }
});

test('broadcast reaches every connected socket', async () => {
  const socks = await Promise.all(
    ['sid=alice-token', 'sid=bob-token', 'sid=user-bc1', 'sid=user-bc2'].map((cookie) => connect(s.url, { cookie })),
  );
  try {
    const recs = socks.map(recorder);
    const res = await s.publish({ broadcast: true, event: 'everyone', data: { b: true } });
    assert.equal(res.ok, true);
    assert.ok(res.recipients >= socks.length, `recipients ${res.recipients}`);
    await Promise.all(recs.map((r) => r.waitCount(1, 'broadcast')));
    for (const r of recs) assert.deepEqual(r.events, [{ event: 'everyone', args: [{ b: true }] }]);
  } finally {
    closeAll(socks);
  }
});

test('custom event name; event defaults to "notification"', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-evt' });
  try {
    const rec = recorder(sock);
    await s.publish({ userId: 'evt', event: 'order:shipped', data: { id: 7 } });
    await s.publish({ userId: 'evt', data: { id: 8 } });
    await rec.waitCount(2);
    assert.deepEqual(rec.events, [
      { event: 'order:shipped', args: [{ id: 7 }] },
      { event: 'notification', args: [{ id: 8 }] },
    ]);
  } finally {
    closeAll([sock]);
  }
});

test('batch of 3 → all delivered, in order', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-batch' });
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const rec = recorder(sock);
    const rbob = recorder(bob);
    const r = await api('POST', '/publish/batch', {
      messages: [
        { userId: 'batch', event: 'seq', data: 1 },
        { userId: 'batch', event: 'seq', data: 2 },
        { userIds: ['batch', 42], event: 'seq', data: 3 },
      ],
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.ok, true, r.text);
    assert.equal(r.json.messages, 3, r.text);
    await rec.waitCount(3);
    await rbob.waitCount(1);
    assert.deepEqual(rec.events, [1, 2, 3].map((n) => ({ event: 'seq', args: [n] })));
    assert.deepEqual(rbob.events, [{ event: 'seq', args: [3] }]);
  } finally {
    closeAll([sock, bob]);
  }
});

test('a batch keeps every socket\'s order: per user across users run at once, a channel or broadcast in between holds its place', async () => {
  await s.control({ sessionExtra: { bm: { rooms: ['team:bm'] } } });
  const users = Array.from({ length: 12 }, (_, i) => `bo${i}`);
  const mine = await connect(s.url, { cookie: 'sid=user-bm' });
  const others = await Promise.all(users.map((u) => connect(s.url, { cookie: `sid=user-${u}` })));
  try {
    const rec = recorder(mine);
    const recs = others.map(recorder);
    const messages = [
      { userId: 'bm', event: 'seq', data: 1 },
      { room: 'team:bm', event: 'seq', data: 2 },
      { userIds: ['bm', users[0]], event: 'seq', data: 3 },
      { broadcast: true, event: 'seq', data: 4 },
      { userId: 'bm', event: 'seq', data: 5 },
    ];
    // 240 per-user messages interleaved across the 12 users, then one more for bm.
    for (let n = 0; n < 240; n += 1) messages.push({ userId: users[n % 12], event: 'seq', data: 100 + n });
    messages.push({ room: 'user:bm', event: 'seq', data: 6 });
    const r = await api('POST', '/publish/batch', { messages });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.messages, messages.length);
    assert.equal(r.json.recipients, 1 + 1 + 2 + 13 + 1 + 240 + 1);
    await rec.waitCount(6);
    assert.deepEqual(rec.events.map((e) => e.args[0]), [1, 2, 3, 4, 5, 6]);
    for (const [i, rc] of recs.entries()) {
      const want = [...(i === 0 ? [3] : []), 4, ...Array.from({ length: 20 }, (_, k) => 100 + i + 12 * k)];
      await rc.waitCount(want.length);
      assert.deepEqual(rc.events.map((e) => e.args[0]), want, `order at ${users[i]}`);
    }
  } finally {
    closeAll([mine, ...others]);
  }
});

test('batch with a bad 2nd message → 400 naming messages[1], nothing delivered', async () => {
  const sock = await connect(s.url, { cookie: 'sid=user-badbatch' });
  try {
    const rec = recorder(sock);
    const r = await api('POST', '/publish/batch', {
      messages: [
        { userId: 'badbatch', data: 'first' },
        { userId: true, data: 'bad' },
        { userId: 'badbatch', data: 'third' },
      ],
    });
    assertError(r, 400, /messages\[1\]/);
    const noTarget = await api('POST', '/publish/batch', {
      messages: [{ userId: 'badbatch', data: 'first' }, { data: 'no target' }],
    });
    assertError(noTarget, 400, /messages\[1\]/);
    await fence(rec, 'badbatch', 'bb-end');
    assert.deepEqual(rec.events, [{ event: 'marker', args: ['bb-end'] }], 'nothing from the rejected batches');
  } finally {
    closeAll([sock]);
  }
});

test('batch shape errors: missing/non-array messages → 400', async () => {
  assertError(await api('POST', '/publish/batch', {}), 400, /messages/);
  assertError(await api('POST', '/publish/batch', { messages: 'nope' }), 400, /messages/);
  assertError(await api('POST', '/publish/batch', '{"messages":['), 400);
});

// ---------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------
test('GET /users/{id}: online with 2 sockets → sockets:2; numeric id as string', async () => {
  const a1 = await connect(s.url, { cookie: 'sid=user-two' });
  const a2 = await connect(s.url, { cookie: 'sid=user-two', transports: ['websocket'] });
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const r = await api('GET', '/users/two');
    assert.equal(r.status, 200, r.text);
    assertFields(r.json, { userId: 'two', online: true, sockets: 2 });
    // bob's sockets from earlier tests were closed client-side; their server-side removal
    // is asynchronous, so allow a bounded settle time.
    const rb = await untilUser('42', 1);
    assertFields(rb, { userId: '42', online: true, sockets: 1 });
    const none = await api('GET', '/users/never-connected');
    assert.equal(none.status, 200, none.text);
    assertFields(none.json, { userId: 'never-connected', online: false, sockets: 0 });
  } finally {
    closeAll([a1, a2, bob]);
  }
});

test('POST /users/alice/disconnect disconnects all her sockets; then offline', async () => {
  const a1 = await connect(s.url, { cookie: 'sid=alice-token' });
  const a2 = await connect(s.url, { cookie: 'sid=alice-token', transports: ['websocket'] });
  const bob = await connect(s.url, { cookie: 'sid=bob-token' });
  try {
    const before = await untilUser('alice', 2); // earlier tests' alice sockets settle first
    assertFields(before, { userId: 'alice', online: true, sockets: 2 });
    const d1 = nextEvent(a1, 'disconnect');
    const d2 = nextEvent(a2, 'disconnect');
    const r = await api('POST', '/users/alice/disconnect');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.ok, true, r.text);
    assert.equal(r.json.disconnected, 2, r.text);
    // A server-side Socket.IO disconnect (not a dropped transport), so browsers do not auto-reconnect.
    assert.equal(await d1, 'io server disconnect');
    assert.equal(await d2, 'io server disconnect');
    const after = await api('GET', '/users/alice');
    assertFields(after.json, { userId: 'alice', online: false, sockets: 0 });
    assert.equal(bob.connected, true, 'bob untouched');
    const rbob = recorder(bob);
    await fence(rbob, 42, 'bob-still');
    const again = await api('POST', '/users/alice/disconnect');
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.ok, true, again.text);
    assert.equal(again.json.disconnected, 0, again.text);
  } finally {
    closeAll([a1, a2, bob]);
  }
});

test('GET /health and GET /stats', async () => {
  const h = await api('GET', '/health');
  assert.equal(h.status, 200);
  assertFields(h.json, { ok: true });
  const before = (await api('GET', '/stats')).json;
  const sock = await connect(s.url, { cookie: 'sid=user-stats' });
  try {
    const rec = recorder(sock);
    await s.publish({ userId: 'stats', data: 1 });
    await rec.waitCount(1);
    const st = await api('GET', '/stats');
    assert.equal(st.status, 200);
    for (const k of ['connections', 'users', 'rooms', 'publishes', 'deliveries']) {
      assert.equal(typeof st.json[k], 'number', `stats.${k}: ${st.text}`);
    }
    assert.ok(st.json.connections >= 1);
    assert.ok(st.json.publishes >= before.publishes + 1, `publishes ${before.publishes} → ${st.json.publishes}`);
    assert.ok(st.json.deliveries >= before.deliveries + 1, `deliveries ${before.deliveries} → ${st.json.deliveries}`);
  } finally {
    closeAll([sock]);
  }
});

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------
test('invalid JSON → 400', async () => {
  assertError(await api('POST', '/publish', '{"userId":'), 400);
  assertError(await api('POST', '/publish', 'not json at all'), 400);
  assertError(await api('POST', '/publish', '[1,2]'), 400);
});

test('missing target → 400', async () => {
  assertError(await api('POST', '/publish', { event: 'x', data: 1 }), 400, /userId|target|room|broadcast/);
  assertError(await api('POST', '/publish', { broadcast: false, data: 1 }), 400, /userId|target|room|broadcast/);
});

test('two targets → 400', async () => {
  assertError(await api('POST', '/publish', { userId: 'a', room: 'r', data: 1 }), 400, /userId|room|target/);
  assertError(await api('POST', '/publish', { userIds: ['a'], broadcast: true, data: 1 }), 400, /userIds|broadcast|target/);
});

test('wrong types → 400 naming the field', async () => {
  assertError(await api('POST', '/publish', { userId: true, data: 1 }), 400, /userId/);
  assertError(await api('POST', '/publish', { userId: { x: 1 }, data: 1 }), 400, /userId/);
  assertError(await api('POST', '/publish', { userIds: 'alice', data: 1 }), 400, /userIds/);
  assertError(await api('POST', '/publish', { userIds: [true], data: 1 }), 400, /userIds/);
  assertError(await api('POST', '/publish', { room: 5, data: 1 }), 400, /room/);
  assertError(await api('POST', '/publish', { broadcast: 'yes', data: 1 }), 400, /broadcast/);
  assertError(await api('POST', '/publish', { userId: 'alice', event: 5, data: 1 }), 400, /event/);
});

test('body larger than 1 MiB → 413 (declared content-length)', async () => {
  const big = JSON.stringify({ userId: 'alice', data: 'x'.repeat(1024 * 1024 + 16) });
  // Expect: 100-continue, because sockgate refuses on the declared length and closes without
  // reading the body: a client still writing it may otherwise get EPIPE instead of the 413.
  const r = await api('POST', '/publish', big, { expectContinue: true });
  assertError(r, 413);
  // Still serving afterwards.
  const h = await api('GET', '/health');
  assert.equal(h.status, 200);
});

test('body larger than 1 MiB → 413 (chunked, no content-length)', async () => {
  const big = JSON.stringify({ userId: 'alice', data: 'x'.repeat(1024 * 1024 + 16) });
  const r = await api('POST', '/publish', big, { chunked: true, expectContinue: true });
  assertError(r, 413);
  const h = await api('GET', '/health');
  assert.equal(h.status, 200);
});

test('a body just under 1 MiB is accepted', async () => {
  const body = { userId: 'nobody-big', data: 'y'.repeat(1024 * 1024 - 200) };
  const r = await api('POST', '/publish', body);
  assert.equal(r.status, 200, r.text.slice(0, 200));
});

test('a body trickled 1 byte at a time → 408 within publish.body_timeout_ms, connection closed, counted', async () => {
  const stack = await startStack({ env: { SIDECAR_PUBLISH__BODY_TIMEOUT_MS: '1000' } });
  after(() => stack.stop());
  const conn = net.connect(stack.publishSocket);
  await new Promise((resolve, reject) => conn.once('connect', resolve).once('error', reject));
  let answer = '';
  let closed = false;
  conn.on('data', (chunk) => (answer += chunk));
  conn.on('error', () => {});
  conn.on('close', () => (closed = true));
  conn.write('POST /publish HTTP/1.1\r\nHost: sockgate\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n');
  const started = Date.now();
  // Bounded: at most 40 bytes, 250 ms apart (10 s), never the whole declared body.
  for (let sent = 0; sent < 40 && !closed && !answer; sent++) {
    conn.write('{');
    await sleep(250);
  }
  await waitFor(() => closed, { timeout: 3000, message: 'the connection to be closed' }).catch(() => {});
  const took = Date.now() - started;
  conn.destroy();
  assert.match(answer, /^HTTP\/1\.1 408 /, `answer after ${took} ms: ${JSON.stringify(answer.slice(0, 200))}`);
  assert.match(answer, /publish\.body_timeout_ms/);
  assert.ok(took < 6000, `answered within the bound (1 s + margin), took ${took} ms`);
  assert.ok(closed, 'the connection is closed after the 408');
  const counted = (await metrics(stack.publishSocket)).get('sockgate_publish_body_timeouts_total');
  assert.equal(counted, 1, 'the timeout is counted');
  // The API still serves.
  assert.equal((await stack.publishApi('GET', '/health')).status, 200);
});

test('unknown path → 404, wrong method → 405', async () => {
  assertError(await api('GET', '/nope'), 404);
  assertError(await api('POST', '/publish/nope', {}), 404);
  assertError(await api('GET', '/publish'), 405);
  assertError(await api('DELETE', '/publish/batch'), 405);
  assertError(await api('POST', '/health', {}), 405);
});

// ---------------------------------------------------------------------------
// Publish socket lifecycle
// ---------------------------------------------------------------------------
test('publish socket file has mode 0660', () => {
  const st = fs.statSync(s.publishSocket);
  assert.ok(st.isSocket());
  assert.equal((st.mode & 0o777).toString(8), '660');
});

test('a stale socket file is replaced on startup', async () => {
  const dir = tmpDir();
  const sock = path.join(dir, 'stale.sock');
  // A process that listens on the path and is then SIGKILLed leaves the file behind.
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(sock)}, () => console.log('ready'))`,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        child.stdout.on('data', (d) => String(d).includes('ready') && resolve());
        child.once('exit', (c) => reject(new Error(`listener exited early (${c})`)));
      }),
      10_000,
      'stale listener ready',
    );
  } finally {
    child.kill('SIGKILL');
  }
  await withTimeout(new Promise((r) => (child.exitCode !== null || child.signalCode ? r() : child.once('exit', r))), 5000, 'listener to die');
  assert.ok(fs.statSync(sock).isSocket(), 'stale socket file left behind');

  const fixture = await startFixture();
  const sg = await startSockgate({ upstreamUrl: fixture.url, publishSocket: sock });
  try {
    // Until sockgate has re-bound the path, the stale file refuses connections.
    const h = await waitFor(() => publishApi(sock, 'GET', '/health'), {
      timeout: 5000,
      message: 'publish API answering on the replaced socket',
    });
    assert.equal(h.status, 200);
    assertFields(h.json, { ok: true });
  } finally {
    await sg.stop();
    await fixture.stop();
  }
});

test('a live listener on the socket path → sockgate exits non-zero naming the path', async () => {
  const dir = tmpDir();
  const sock = path.join(dir, 'busy.sock');
  const server = net.createServer((c) => c.end());
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(sock, resolve);
  });
  try {
    const port = await freePort();
    const proc = spawnSockgate({ port, upstreamUrl: 'http://127.0.0.1:9', publishSocket: sock });
    const { code } = await proc.waitExit(10_000);
    const out = proc.text();
    assert.ok(code !== 0 && code !== null, `exit code ${code}; output:\n${out}`);
    assert.ok(out.includes(sock), `output names the path ${sock}:\n${out}`);
    assert.match(out, /another process|in use|already listening|is listening|live/i);
    // Our listener is untouched.
    assert.ok(fs.statSync(sock).isSocket());
    await withTimeout(
      new Promise((resolve, reject) => {
        const c = net.connect(sock, () => {
          c.destroy();
          resolve();
        });
        c.on('error', reject);
      }),
      5000,
      'connect to the original listener',
    );
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('SIGTERM → sockgate removes the socket file and exits 0', async () => {
  const fixture = await startFixture();
  const sg = await startSockgate({ upstreamUrl: fixture.url });
  try {
    const sock = await connect(sg.url, { cookie: 'sid=alice-token' });
    // Past the polling → WebSocket upgrade: a server that goes away in the middle of the
    // probe leaves socket.io-client waiting for its ping timeout, whatever the server does.
    await waitFor(() => sock.io.engine.transport.name === 'websocket', { message: 'the upgrade' });
    assert.ok(fs.existsSync(sg.publishSocket));
    sg.proc.child.kill('SIGTERM');
    const { code, signal } = await sg.proc.waitExit(10_000);
    assert.equal(signal, null, `killed by ${signal}`);
    assert.equal(code, 0, `exit code ${code}:\n${sg.proc.text()}`);
    assert.equal(fs.existsSync(sg.publishSocket), false, 'socket file removed');
    await waitFor(() => !sock.connected, { timeout: 5000, message: 'client sees the disconnect' });
    closeAll([sock]);
  } finally {
    await sg.stop();
    await fixture.stop();
  }
});

// ---------------------------------------------------------------------------------------------
// The optional loopback TCP listener: same API, bearer token required.
// ---------------------------------------------------------------------------------------------
function tcpRequest(port, method, p, body, token) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = { 'content-type': 'application/json' };
    if (payload) headers['content-length'] = payload.length;
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, timeout: 5000 }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, json: JSON.parse(text) }));
    });
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

test('publish over loopback TCP needs the bearer token', async () => {
  const port = await freePort();
  const token = 'a-token-of-sufficient-length';
  const stack = await startStack({
    env: { SIDECAR_PUBLISH__TCP_LISTEN: `127.0.0.1:${port}`, SIDECAR_PUBLISH__TOKEN: token },
  });
  after(() => stack.stop());
  await waitFor(() => tcpRequest(port, 'GET', '/health', undefined, token).then((r) => r.status === 200, () => false), {
    message: 'TCP publish listener up',
  });
  const sock = await connect(stack.url, { cookie: 'sid=alice-token' });
  const rec = recorder(sock);
  try {
    for (const given of [undefined, 'wrong', `${token}x`]) {
      const r = await tcpRequest(port, 'POST', '/publish', { userId: 'alice', data: 'no' }, given);
      assert.equal(r.status, 401, `token ${given}`);
      assert.equal(r.headers['www-authenticate'], 'Bearer');
    }
    const ok = await tcpRequest(port, 'POST', '/publish', { userId: 'alice', data: 'yes' }, token);
    assert.equal(ok.status, 200);
    await rec.waitCount(1);
    assert.deepEqual(rec.of('notification'), ['yes'], 'only the authorized publish arrived');
    // The Unix socket needs no token.
    assert.equal((await stack.publishApi('GET', '/health')).status, 200);
  } finally {
    closeAll([sock]);
  }
});

test('the TCP listener refuses non-loopback addresses and short tokens at startup', async () => {
  for (const [env, key] of [
    [{ SIDECAR_PUBLISH__TCP_LISTEN: '0.0.0.0:7071', SIDECAR_PUBLISH__TOKEN: 'a-token-of-sufficient-length' }, 'publish.tcp_listen'],
    [{ SIDECAR_PUBLISH__TCP_LISTEN: '127.0.0.1:7071', SIDECAR_PUBLISH__TOKEN: 'short' }, 'publish.token'],
  ]) {
    const proc = spawnSockgate({ port: await freePort(), upstreamUrl: 'http://127.0.0.1:9', publishSocket: path.join(tmpDir(), 's.sock'), env });
    const exit = await proc.waitExit(10_000);
    assert.notEqual(exit.code, 0);
    assert.match(proc.text(), new RegExp(key.replace('.', '\\.')));
  }
});

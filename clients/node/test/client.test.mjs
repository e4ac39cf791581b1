// node --test test/client.test.mjs
//
// 1. Unit tests against tiny fake servers (always run).
// 2. Integration tests against a real sockgate binary: $SOCKGATE_BIN or
//    <repo>/target/debug/sockgate (skipped when it does not exist).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import {
  closeDefaultClient,
  createClient,
  defaultSocketPath,
  disconnectUser,
  presence,
  publish,
  pushNotification,
  room,
  SockgateError,
  userStatus,
  verifyWebhook,
} from '../index.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SOCKGATE_BIN = process.env.SOCKGATE_BIN || path.resolve(here, '../../../target/debug/sockgate');
const NOT_RUNNING = /^sockgate is not running: cannot connect to .+ \((ENOENT|ECONNREFUSED)\) — start sockgate or set SOCKGATE_SOCKET$/;

function tmpDir() {
  return mkdtempSync(path.join(os.tmpdir(), 'sockgate-client-'));
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** An HTTP server on a Unix socket; `handler` gets (req, res, body). Counts TCP connections. */
async function fakeServer(socketPath, handler) {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => handler(req, res, Buffer.concat(chunks).toString('utf8')));
  });
  server.connections = 0;
  server.on('connection', () => server.connections++);
  await new Promise((r) => server.listen(socketPath, r));
  return server;
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

describe('client (fake server)', () => {
  let dir;
  before(() => {
    dir = tmpDir();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('"not running" error when the socket file does not exist', async () => {
    const socketPath = path.join(dir, 'missing.sock');
    const client = createClient({ socketPath });
    await assert.rejects(client.health(), (err) => {
      assert.ok(err instanceof SockgateError);
      assert.equal(err.code, 'ENOENT');
      assert.match(err.message, NOT_RUNNING);
      assert.ok(err.message.includes(socketPath));
      return true;
    });
    client.close();
  });

  test('"not running" error for a stale socket file (ECONNREFUSED)', async () => {
    const socketPath = path.join(dir, 'stale.sock');
    // A child listens, then gets SIGKILLed so the socket file stays behind.
    const child = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`,
    ], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve) => child.stdout.once('data', resolve));
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    assert.ok(existsSync(socketPath));

    const client = createClient({ socketPath });
    await assert.rejects(client.publish({ userId: 'u1', event: 'x', data: 1 }), (err) => {
      assert.equal(err.code, 'ECONNREFUSED');
      assert.match(err.message, NOT_RUNNING);
      return true;
    });
    client.close();
  });

  test('4xx carries status and the server error text; request shape is right', async () => {
    const socketPath = path.join(dir, 'err.sock');
    const seen = [];
    const server = await fakeServer(socketPath, (req, res, body) => {
      seen.push({ method: req.method, url: req.url, type: req.headers['content-type'], body });
      if (req.url === '/publish') return sendJson(res, 400, { ok: false, error: 'exactly one target required' });
      if (req.url === '/users/a%2Fb/disconnect') return sendJson(res, 200, { ok: true, disconnected: 2 });
      sendJson(res, 404, { ok: false, error: 'not found' });
    });
    const client = createClient({ socketPath });
    try {
      await assert.rejects(client.publish({ event: 'notification', data: {} }), (err) => {
        assert.equal(err.status, 400);
        assert.equal(err.error, 'exactly one target required');
        assert.equal(err.code, 'SOCKGATE_HTTP_ERROR');
        assert.match(err.message, /400: exactly one target required/);
        return true;
      });
      assert.deepEqual(await client.disconnectUser('a/b'), { ok: true, disconnected: 2 });
      await assert.rejects(client.stats(), { status: 404, error: 'not found' });
      assert.deepEqual(seen[0], {
        method: 'POST',
        url: '/publish',
        type: 'application/json',
        body: '{"event":"notification","data":{}}',
      });
      assert.equal(seen[1].method, 'POST');
      assert.equal(seen[2].method, 'GET');
    } finally {
      client.close();
      server.close();
    }
  });

  test('pushNotification / publishBatch payloads; numeric ids become strings', async () => {
    const socketPath = path.join(dir, 'ok.sock');
    const bodies = [];
    const server = await fakeServer(socketPath, (req, res, body) => {
      bodies.push([req.url, JSON.parse(body)]);
      sendJson(res, 200, req.url === '/publish' ? { ok: true, recipients: 1 } : { ok: true, messages: 2 });
    });
    const prev = process.env.SOCKGATE_SOCKET;
    process.env.SOCKGATE_SOCKET = socketPath;
    closeDefaultClient();
    try {
      assert.deepEqual(await pushNotification(42, { title: 'hi' }), { ok: true, recipients: 1 });
      const c = createClient({ socketPath });
      assert.deepEqual(
        await c.publishBatch([{ userIds: [1, 'b'], event: 'e' }, { broadcast: true, event: 'f', data: null }]),
        { ok: true, messages: 2 },
      );
      c.close();
      assert.deepEqual(bodies, [
        ['/publish', { userId: '42', event: 'notification', data: { title: 'hi' } }],
        ['/publish/batch', { messages: [{ userIds: ['1', 'b'], event: 'e' }, { broadcast: true, event: 'f', data: null }] }],
      ]);
    } finally {
      closeDefaultClient();
      if (prev === undefined) delete process.env.SOCKGATE_SOCKET;
      else process.env.SOCKGATE_SOCKET = prev;
      server.close();
    }
  });

  test('room / presence: GET /rooms/{room}, the name percent-encoded; presence is the members array', async () => {
    const socketPath = path.join(dir, 'rooms.sock');
    const urls = [];
    const server = await fakeServer(socketPath, (req, res) => {
      urls.push(`${req.method} ${req.url}`);
      if (req.url === '/rooms/presence%3Ateam%40x') {
        return sendJson(res, 200, {
          room: 'presence:team@x', sockets: 3, users: 2, scope: 'local',
          members: [{ id: 'alice', info: { name: 'Alice' } }, { id: 'bob', info: null }],
        });
      }
      if (req.url === '/rooms/team%3Ademo') return sendJson(res, 200, { room: 'team:demo', sockets: 0, users: 0, scope: 'local' });
      sendJson(res, 400, { ok: false, error: 'invalid room' });
    });
    const client = createClient({ socketPath });
    try {
      assert.deepEqual(await client.presence('presence:team@x'), [
        { id: 'alice', info: { name: 'Alice' } },
        { id: 'bob', info: null },
      ]);
      assert.equal((await client.room('presence:team@x')).users, 2);
      assert.deepEqual(await client.room('team:demo'), { room: 'team:demo', sockets: 0, users: 0, scope: 'local' });
      assert.deepEqual(await client.presence('team:demo'), [], 'not a presence room: no members');
      await assert.rejects(client.room('a b'), { status: 400, error: 'invalid room', code: 'SOCKGATE_HTTP_ERROR' });
      await assert.rejects(client.room(''), TypeError);
      await assert.rejects(client.presence(undefined), TypeError);
      assert.deepEqual(urls, [
        'GET /rooms/presence%3Ateam%40x',
        'GET /rooms/presence%3Ateam%40x',
        'GET /rooms/team%3Ademo',
        'GET /rooms/team%3Ademo',
        'GET /rooms/a%20b',
      ]);
    } finally {
      client.close();
      server.close();
    }
  });

  test('503 + Retry-After (cluster backpressure): the same request again after the delay, within busyRetryMs', async () => {
    const socketPath = path.join(dir, 'busy.sock');
    const seen = [];
    let busyFor = 2; // the first two publishes are refused
    const server = await fakeServer(socketPath, (req, res, body) => {
      seen.push({ at: Date.now(), body });
      if (req.url === '/publish' && busyFor-- > 0) {
        res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '0' });
        return res.end(JSON.stringify({ ok: false, error: 'an instance is behind', retryAfter: 0 }));
      }
      if (req.url === '/publish/batch') {
        res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
        return res.end(JSON.stringify({ ok: false, error: 'an instance is behind', retryAfter: 1 }));
      }
      sendJson(res, 200, { ok: true, recipients: 1 });
    });
    const client = createClient({ socketPath, busyRetryMs: 500 });
    const noRetry = createClient({ socketPath, busyRetryMs: 0 });
    try {
      assert.deepEqual(await client.publish({ userId: 'u1', event: 'n', data: { k: 1 } }), { ok: true, recipients: 1 });
      assert.equal(seen.length, 3, 'refused twice, then accepted');
      assert.ok(seen.every((r) => r.body === seen[0].body), 'the same request each time');

      // A delay past what is left of busyRetryMs: the 503 at once, not a wait.
      const started = Date.now();
      await assert.rejects(client.publishBatch([{ userId: 'u1', event: 'n', data: {} }]), (err) => {
        assert.equal(err.status, 503);
        assert.equal(err.retryAfterMs, 1000);
        assert.match(err.message, /503: an instance is behind/);
        return true;
      });
      assert.ok(Date.now() - started < 400, 'did not wait for a retry it could not make');

      busyFor = 1;
      await assert.rejects(noRetry.publish({ userId: 'u1', event: 'n', data: {} }), { status: 503 });
    } finally {
      client.close();
      noRetry.close();
      server.close();
    }
  });

  test('timeout gives a clear error', async () => {
    const socketPath = path.join(dir, 'slow.sock');
    const server = await fakeServer(socketPath, () => {}); // never answers
    const client = createClient({ socketPath, timeoutMs: 150 });
    try {
      await assert.rejects(client.health(), (err) => {
        assert.equal(err.code, 'SOCKGATE_TIMEOUT');
        assert.match(err.message, /^sockgate did not respond within 150ms \(GET \/health on /);
        return true;
      });
    } finally {
      client.close();
      server.closeAllConnections();
      server.close();
    }
  });

  test('keep-alive: 200 sequential requests share one connection', async () => {
    const socketPath = path.join(dir, 'ka.sock');
    const server = await fakeServer(socketPath, (req, res) => sendJson(res, 200, { ok: true, recipients: 0 }));
    const client = createClient({ socketPath });
    try {
      for (let i = 0; i < 200; i++) await client.publish({ room: 'r', event: 'tick', data: i });
      assert.equal(server.connections, 1);
    } finally {
      client.close();
      server.close();
    }
  });

  test('closed client rejects', async () => {
    const client = createClient({ socketPath: path.join(dir, 'x.sock') });
    client.close();
    await assert.rejects(client.health(), { code: 'SOCKGATE_CLOSED' });
  });
});

// ---------------------------------------------------------------------------

const haveBinary = existsSync(SOCKGATE_BIN);

/**
 * Starts sockgate with `env` (over a copy of this process's environment without SIDECAR_*)
 * and waits for its publish socket. `output()` is what it printed so far; `stop()` ends it.
 */
async function startSockgate({ cwd, socketPath, env }) {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SIDECAR_')));
  const child = spawn(SOCKGATE_BIN, [], {
    cwd,
    env: { ...inherited, SIDECAR_PUBLISH__SOCKET: socketPath, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  let exited = null;
  child.once('exit', (code, signal) => (exited = { code, signal }));
  const deadline = Date.now() + 15_000;
  while (!existsSync(socketPath)) {
    if (exited) throw new Error(`sockgate exited early (${JSON.stringify(exited)}) before creating ${socketPath}:\n${output}`);
    if (Date.now() > deadline) throw new Error(`sockgate did not create ${socketPath} within 15s:\n${output}`);
    await sleep(50);
  }
  return {
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    },
  };
}

describe('client against a real sockgate', { skip: haveBinary ? false : `no sockgate binary at ${SOCKGATE_BIN}` }, () => {
  let dir;
  let socketPath;
  let sockgate;

  before(async () => {
    dir = tmpDir();
    socketPath = path.join(dir, 's.sock');
    const [port, upstreamPort] = [await freePort(), await freePort()];
    sockgate = await startSockgate({
      socketPath,
      env: {
        SIDECAR_SERVER__HOST: '127.0.0.1',
        SIDECAR_SERVER__PORT: String(port),
        SIDECAR_UPSTREAM__URL: `http://127.0.0.1:${upstreamPort}`,
      },
    });
    process.env.SOCKGATE_SOCKET = socketPath; // for the top-level helpers
    closeDefaultClient();
  });

  after(async () => {
    closeDefaultClient();
    await sockgate?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('health', async () => {
    const client = createClient({ socketPath });
    try {
      const res = await client.health();
      assert.equal(res.ok, true);
    } finally {
      client.close();
    }
  });

  test('pushNotification resolves ok', async () => {
    const res = await pushNotification('u1', { title: 'hello', body: 'from the test' });
    assert.equal(res.ok, true);
    assert.equal(typeof res.recipients, 'number');
  });

  test('publish with the top-level helper', async () => {
    const res = await publish({ broadcast: true, event: 'announcement', data: { v: 1 } });
    assert.equal(res.ok, true);
  });

  test('a bad message rejects with 400 and the server error text', async () => {
    await assert.rejects(publish({ event: 'notification', data: {} }), (err) => {
      assert.equal(err.status, 400);
      assert.equal(typeof err.error, 'string');
      assert.ok(err.error.length > 0);
      assert.ok(err.message.includes(err.error));
      return true;
    });
    await assert.rejects(
      publish({ userId: 'u1', broadcast: true, event: 'notification' }),
      { status: 400 },
    );
  });

  test('disconnectUser resolves', async () => {
    const res = await disconnectUser('u1');
    assert.equal(res.ok, true);
    assert.equal(res.disconnected, 0);
  });

  test('userStatus and stats', async () => {
    const client = createClient({ socketPath });
    try {
      const status = await client.userStatus('u1');
      assert.equal(status.userId, 'u1');
      assert.equal(status.online, false);
      assert.equal(status.sockets, 0);
      const stats = await client.stats();
      assert.equal(typeof stats, 'object');
    } finally {
      client.close();
    }
  });

  test('publishBatch resolves with the message count', async () => {
    const client = createClient({ socketPath });
    try {
      const res = await client.publishBatch([
        { userId: 'u1', event: 'notification', data: { n: 1 } },
        { room: 'lobby', event: 'tick', data: 2 },
      ]);
      assert.equal(res.ok, true);
      assert.equal(res.messages, 2);
    } finally {
      client.close();
    }
  });

  test('keep-alive: 200 sequential publishes reuse the pooled connection', async () => {
    let created = 0;
    class CountingAgent extends http.Agent {
      createConnection(...args) {
        created++;
        return super.createConnection(...args);
      }
    }
    const agent = new CountingAgent({ keepAlive: true });
    const client = createClient({ socketPath, agent });
    try {
      for (let i = 0; i < 200; i++) {
        const res = await client.publish({ userId: 'u1', event: 'tick', data: { i } });
        assert.equal(res.ok, true);
      }
      assert.ok(created >= 1 && created <= 2, `expected 1 pooled connection, agent opened ${created}`);
    } finally {
      client.close();
      agent.destroy();
    }
  });
});

describe('default socket path', () => {
  test('a squatted default directory (writable by others, or another user\'s) is refused before connecting', async () => {
    const runtime = tmpDir();
    const dir = path.join(runtime, 'sockgate');
    mkdirSync(dir);
    // A socket another user could have put there: the client must not even connect to it.
    let connected = 0;
    const squatter = http.createServer((_req, res) => res.end('{"ok":true}'));
    squatter.on('connection', () => { connected += 1; });
    await new Promise((resolve) => squatter.listen(path.join(dir, 'sockgate.sock'), resolve));
    const client = createClient({ env: { XDG_RUNTIME_DIR: runtime } });
    try {
      chmodSync(dir, 0o777);
      await assert.rejects(client.health(), (err) => {
        assert.equal(err.code, 'SOCKGATE_UNSAFE_SOCKET_DIR');
        assert.match(err.message, /writable by others/);
        return true;
      });
      if (process.geteuid?.() === 0) {
        chmodSync(dir, 0o700);
        chownSync(dir, 65534, 65534);
        await assert.rejects(client.health(), /belongs to uid 65534/);
        chownSync(dir, 0, 0);
      }
      assert.equal(connected, 0, 'the client connected to a squatted socket');
      // The same directory made private is used.
      chmodSync(dir, 0o700);
      assert.equal((await client.health()).ok, true);
    } finally {
      client.close();
      await new Promise((resolve) => squatter.close(resolve));
      rmSync(runtime, { recursive: true, force: true });
    }
  });

  test('is private per user, by the same rule as sockgate', () => {
    assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000), '/run/user/1000/sockgate/sockgate.sock');
    assert.equal(defaultSocketPath({}, 1000), '/tmp/sockgate-1000/sockgate.sock');
    assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: '' }, 7), '/tmp/sockgate-7/sockgate.sock');
  });

  test('finds a sockgate started without publish.socket', { skip: haveBinary ? false : `no sockgate binary at ${SOCKGATE_BIN}` }, async () => {
    const runtime = tmpDir();
    const env = { PATH: process.env.PATH, XDG_RUNTIME_DIR: runtime };
    const [port, upstreamPort] = [await freePort(), await freePort()];
    const child = spawn(SOCKGATE_BIN, [], {
      cwd: runtime,
      env: {
        ...env,
        SIDECAR_SERVER__HOST: '127.0.0.1',
        SIDECAR_SERVER__PORT: String(port),
        SIDECAR_UPSTREAM__URL: `http://127.0.0.1:${upstreamPort}`,
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const client = createClient({ env }); // the default socket, its directory checked
    try {
      const deadline = Date.now() + 15_000;
      while (!existsSync(defaultSocketPath(env))) {
        if (Date.now() > deadline) throw new Error('sockgate did not create its default socket');
        await sleep(50);
      }
      const health = await client.health();
      assert.equal(health.ok, true);
    } finally {
      client.close();
      child.kill('SIGKILL');
      rmSync(runtime, { recursive: true, force: true });
    }
  });
});

describe('verifyWebhook', () => {
  // RFC 4231 test case 2, in the `sha256=<hex>` form sockgate sends.
  const body = 'what do ya want for nothing?';
  const good = 'sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843';

  test('accepts the HMAC-SHA256 of the exact body (string or Buffer)', () => {
    assert.equal(verifyWebhook(body, good, 'Jefe'), true);
    assert.equal(verifyWebhook(Buffer.from(body), good, Buffer.from('Jefe')), true);
  });

  test('refuses a wrong secret, a changed body, or a malformed or missing header', () => {
    assert.equal(verifyWebhook(body, good, 'jefe'), false);
    assert.equal(verifyWebhook(`${body} `, good, 'Jefe'), false);
    assert.equal(verifyWebhook(body, good.slice(0, -1), 'Jefe'), false);
    assert.equal(verifyWebhook(body, good.replace('sha256=', ''), 'Jefe'), false);
    assert.equal(verifyWebhook(body, undefined, 'Jefe'), false);
    assert.equal(verifyWebhook(body, [good], 'Jefe'), false);
    assert.equal(verifyWebhook(body, good, ''), false);
  });
});

// ---------------------------------------------------------------------------
// Rooms and presence against a real sockgate: a small app answers the session route
// (userId, user, rooms) and the authorize route; sockets come from socket.io-client, taken
// from the test fixture's dependencies (tests/fixture: `npm ci` there), skipped without it.

const fixtureRequire = createRequire(path.resolve(here, '../../../tests/fixture/package.json'));
let ioClient = null;
try {
  ioClient = fixtureRequire('socket.io-client').io;
} catch {
  ioClient = null;
}
const roomsSkip = !haveBinary
  ? `no sockgate binary at ${SOCKGATE_BIN}`
  : !ioClient ? 'socket.io-client is not installed in tests/fixture (npm ci there)' : false;

async function eventually(fn, { timeout = 5000, interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${message} not met within ${timeout} ms: ${last?.message}`);
    await sleep(interval);
  }
}

describe('rooms and presence against a real sockgate', { skip: roomsSkip }, () => {
  const ORIGIN = 'http://app.test';
  let dir;
  let socketPath;
  let sockgate;
  let app;
  let port;
  const sockets = new Set();
  const authorized = [];

  before(async () => {
    dir = tmpDir();
    socketPath = path.join(dir, 's.sock');
    // The app: cookie `u=<id>` is a session; the session route names the user's rooms and
    // member info, the authorize route allows team:* and presence:team-* only.
    app = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const user = /(?:^|;\s*)u=([a-z]+)/.exec(req.headers.cookie ?? '')?.[1];
        if (req.method === 'GET' && req.url === '/api/session') {
          if (!user) return sendJson(res, 401, { error: 'unauthorized' });
          return sendJson(res, 200, {
            userId: user,
            user: { name: user[0].toUpperCase() + user.slice(1) },
            rooms: ['team:demo'],
          });
        }
        if (req.method === 'POST' && req.url === '/api/socket/authorize') {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
          authorized.push({ user, ...body });
          if (!user) return sendJson(res, 401, { error: 'unauthorized' });
          const ok = /^(team:|presence:team-)/.test(body.room);
          return sendJson(res, ok ? 200 : 403, ok ? { ok: true } : { error: 'forbidden' });
        }
        sendJson(res, 404, { error: 'not found' });
      });
    });
    await new Promise((r) => app.listen(0, '127.0.0.1', r));
    port = await freePort();
    sockgate = await startSockgate({
      cwd: dir,
      socketPath,
      env: {
        SIDECAR_SERVER__HOST: '127.0.0.1',
        SIDECAR_SERVER__PORT: String(port),
        SIDECAR_UPSTREAM__URL: `http://127.0.0.1:${app.address().port}`,
        SIDECAR_REALTIME__ALLOWED_ORIGINS: JSON.stringify([ORIGIN]),
        SIDECAR_AUTH__SESSION_PATH: '/api/session',
        SIDECAR_CHANNELS__PRESENCE_GRACE_MS: '300',
      },
    });
    process.env.SOCKGATE_SOCKET = socketPath; // for the top-level helpers
    closeDefaultClient();
  });

  after(async () => {
    for (const s of sockets) s.close();
    closeDefaultClient();
    await sockgate?.stop();
    if (app) await new Promise((r) => app.close(r));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A connected socket for `user` (its session cookie), reconnection off. */
  function connectAs(user) {
    const socket = ioClient(`http://127.0.0.1:${port}`, {
      reconnection: false,
      forceNew: true,
      timeout: 5000,
      extraHeaders: { cookie: `u=${user}`, origin: ORIGIN },
    });
    sockets.add(socket);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${user}: no connect within 5 s\n${sockgate.output()}`)), 5000);
      socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
      socket.once('connect_error', (err) => { clearTimeout(timer); reject(new Error(`${user}: connect_error ${err.message}`)); });
    });
  }

  const ack = (socket, event, body) => socket.timeout(5000).emitWithAck(event, body);

  let alice1;
  let alice2;
  let bob;

  test('room(): an empty room counts nothing', async () => {
    const res = await room('team:nobody-here');
    assert.equal(res.room, 'team:nobody-here');
    assert.equal(res.sockets, 0);
    assert.equal(res.users, 0);
    assert.equal(res.members, undefined, 'not a presence room: no members');
    assert.ok(['local', 'cluster'].includes(res.scope), JSON.stringify(res));
  });

  test('room(): sockets join the rooms their session route names; publish to the room reaches them', async () => {
    alice1 = await connectAs('alice');
    alice2 = await connectAs('alice'); // a second tab
    bob = await connectAs('bob');
    const res = await room('team:demo');
    assert.deepEqual({ room: res.room, sockets: res.sockets, users: res.users }, { room: 'team:demo', sockets: 3, users: 2 });
    assert.equal(res.members, undefined);
    assert.deepEqual(await presence('team:demo'), [], 'presence() of a plain room is []');

    const got = [alice1, alice2, bob].map((s) => new Promise((r) => s.once('team', r)));
    const pub = await publish({ room: 'team:demo', event: 'team', data: { text: 'hello team' } });
    assert.equal(pub.recipients, 3);
    assert.deepEqual(await Promise.all(got), [{ text: 'hello team' }, { text: 'hello team' }, { text: 'hello team' }]);
  });

  test('presence(): one member per user with the session route\'s user info; userStatus lists the rooms', async () => {
    for (const s of [alice1, alice2, bob]) {
      assert.deepEqual(await ack(s, 'subscribe', { room: 'presence:team-demo' }), { ok: true });
    }
    assert.deepEqual(await ack(bob, 'subscribe', { room: 'secret:stuff' }), { ok: false, error: 'forbidden' });
    assert.ok(authorized.some((a) => a.room === 'presence:team-demo' && a.userId === 'alice' && a.user === 'alice'),
      `the authorize route got the cookie and {room, userId}: ${JSON.stringify(authorized)}`);

    const members = await presence('presence:team-demo');
    assert.deepEqual(
      [...members].sort((a, b) => a.id.localeCompare(b.id)),
      [{ id: 'alice', info: { name: 'Alice' } }, { id: 'bob', info: { name: 'Bob' } }],
    );
    const res = await room('presence:team-demo');
    assert.equal(res.sockets, 3);
    assert.equal(res.users, 2);
    assert.equal(res.members.length, 2);

    const status = await userStatus('alice');
    assert.equal(status.sockets, 2);
    assert.deepEqual([...status.rooms].sort(), ['presence:team-demo', 'team:demo']);
  });

  test('presence(): a user whose last socket left is gone after the grace', async () => {
    bob.close();
    await eventually(async () => {
      const ids = (await presence('presence:team-demo')).map((m) => m.id);
      assert.deepEqual(ids, ['alice']);
    }, { message: 'bob gone from presence' });
    const res = await room('presence:team-demo');
    assert.deepEqual({ sockets: res.sockets, users: res.users }, { sockets: 2, users: 1 });
    // One of alice's two tabs leaving changes nothing for presence.
    assert.deepEqual(await ack(alice2, 'unsubscribe', { room: 'presence:team-demo' }), { ok: true });
    await sleep(500);
    assert.deepEqual((await presence('presence:team-demo')).map((m) => m.id), ['alice']);
    assert.equal((await room('presence:team-demo')).sockets, 1);
  });
});

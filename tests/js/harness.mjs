// Test harness for sockgate's JS integration tests (`node --test tests/js/`).
//
// Starts the fixture upstream app (tests/fixture/app.mjs) and the sockgate
// binary (target/debug/sockgate, or $SOCKGATE_BIN) on free ports, waits until
// both are ready, and tears everything down after the test file. Output of
// every child process is captured and printed when a test fails (set
// SOCKGATE_TEST_VERBOSE=1 or SOCKGATE_TEST_LOG=1, as for the Rust tests, to stream it
// live instead; SOCKGATE_TEST_LOG_FILTER sets sockgate's log filter, default `info`).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { after, afterEach } from 'node:test';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const FIXTURE_APP = path.join(REPO_ROOT, 'tests', 'fixture', 'app.mjs');
export const SOCKGATE_BIN = process.env.SOCKGATE_BIN
  ? path.resolve(process.env.SOCKGATE_BIN)
  : path.join(REPO_ROOT, 'target', 'debug', 'sockgate');

// socket.io-client lives in the fixture's node_modules (npm ci --prefix tests/fixture).
const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
export const { io } = fixtureRequire('socket.io-client');

const VERBOSE = !!(process.env.SOCKGATE_TEST_VERBOSE || process.env.SOCKGATE_TEST_LOG);
export const DEFAULT_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects with `message` if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${message}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (sync or async) until it returns a truthy value; returns it. */
export async function waitFor(fn, { timeout = DEFAULT_TIMEOUT_MS, interval = 25, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timeout after ${timeout} ms waiting for ${message}${lastErr ? ` (last error: ${lastErr.message})` : ''}`,
      );
    }
    await sleep(interval);
  }
}

// Ports are chosen below the kernel's ephemeral range (Linux: 32768–60999): a port from that
// range (what listening on port 0 gives) can be taken by any outgoing connection between this
// check and the process that binds it ("Address already in use" on a busy machine). Each test
// process starts at its own place, so processes running side by side rarely try the same one.
const PORT_LOW = 20_000;
const PORT_SPAN = 12_000;
let nextPort = (process.pid * 7_919 + Date.now()) % PORT_SPAN;

function listensOn(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A port that was free a moment ago, below the ephemeral range. */
/**
 * Stops process `pid` (SIGSTOP) and resolves once every one of its threads is stopped. kill()
 * returns before a multi-threaded process's group stop has finished: on a busy machine a
 * thread can still answer a request for a moment after it (seen: an instance "stopped" this
 * way answered a cluster query sent after the kill).
 */
export async function stopProcess(pid, timeout = 2000) {
  process.kill(pid, 'SIGSTOP');
  const stopped = () =>
    fs.readdirSync(`/proc/${pid}/task`).every((task) => {
      const stat = fs.readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
      return /^[Tt]/.test(stat.slice(stat.lastIndexOf(')') + 2));
    });
  await waitFor(stopped, { timeout, interval: 1, message: `every thread of process ${pid} stopped` });
}

export async function freePort() {
  for (let tries = 0; tries < PORT_SPAN; tries += 1) {
    nextPort = (nextPort + 97) % PORT_SPAN;
    const port = PORT_LOW + nextPort;
    if (await listensOn(port)) return port;
  }
  throw new Error(`no free port in ${PORT_LOW}..${PORT_LOW + PORT_SPAN}`);
}

function tcpAccepts(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.on('error', () => {});
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export function tmpDir(prefix = 'sockgate-js-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  registry.tmpDirs.push(dir);
  return dir;
}

// ---------------------------------------------------------------------------
// Process registry: everything started here is killed in `after`, and its
// output is dumped when a test fails.
// ---------------------------------------------------------------------------
const registry = {
  procs: new Set(), // ManagedProcess
  sockets: new Set(), // socket.io-client sockets
  tmpDirs: [],
};

class ManagedProcess {
  constructor(name, cmd, args, options) {
    this.name = name;
    this.output = [];
    this.exited = false;
    this.exitCode = null;
    this.signal = null;
    this.child = spawn(cmd, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exitPromise = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = true;
        this.exitCode = code;
        this.signal = signal;
        this.output.push(`[${this.name}] exited code=${code} signal=${signal}\n`);
        resolve({ code, signal });
      });
      this.child.once('error', (err) => {
        this.exited = true;
        this.output.push(`[${this.name}] spawn error: ${err.message}\n`);
        resolve({ code: null, signal: null, error: err });
      });
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (d) => {
        this.output.push(d);
        if (VERBOSE) process.stderr.write(`[${this.name}] ${d}`);
      });
    }
    registry.procs.add(this);
  }

  get pid() {
    return this.child.pid;
  }

  text() {
    return this.output.join('');
  }

  /** Waits for exit, bounded; returns {code, signal}. */
  waitExit(timeout = DEFAULT_TIMEOUT_MS) {
    return withTimeout(this.exitPromise, timeout, `${this.name} (pid ${this.pid}) to exit`);
  }

  /** Sends `signal`, waits for exit (SIGKILL after `timeout`). */
  async stop(signal = 'SIGTERM', timeout = 5000) {
    if (!this.exited) {
      try {
        this.child.kill(signal);
      } catch {}
      try {
        await this.waitExit(timeout);
      } catch {
        try {
          this.child.kill('SIGKILL');
        } catch {}
        await this.waitExit(2000).catch(() => {});
      }
    }
    return { code: this.exitCode, signal: this.signal };
  }
}

function dumpOutputs(title) {
  const parts = [];
  for (const p of registry.procs) {
    const text = p.text();
    const tail = text.length > 20_000 ? `...(truncated)...\n${text.slice(-20_000)}` : text;
    parts.push(`----- ${p.name} (pid ${p.pid}) output -----\n${tail || '(no output)\n'}`);
  }
  if (parts.length) process.stderr.write(`\n===== test failed: ${title} =====\n${parts.join('')}\n`);
}

afterEach((t) => {
  if (t.passed === false) dumpOutputs(t.name);
  // Forget processes that ended during the test; their output was dumped if needed.
  for (const p of registry.procs) if (p.exited) registry.procs.delete(p);
});

after(async () => {
  for (const s of registry.sockets) {
    try {
      s.close();
    } catch {}
  }
  registry.sockets.clear();
  await Promise.all([...registry.procs].map((p) => p.stop('SIGKILL', 2000)));
  registry.procs.clear();
  for (const dir of registry.tmpDirs) fs.rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------
export async function startFixture({ env = {}, port } = {}) {
  port ??= await freePort();
  const proc = new ManagedProcess(`fixture:${port}`, process.execPath, [FIXTURE_APP], {
    cwd: REPO_ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), ...env },
  });
  await waitFor(
    async () => {
      if (proc.exited) throw new Error(`fixture exited early:\n${proc.text()}`);
      return tcpAccepts(port);
    },
    { message: `fixture to accept TCP on 127.0.0.1:${port}` },
  ).catch((e) => {
    throw new Error(`${e.message}\n--- fixture output ---\n${proc.text()}`);
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    proc,
    control: (body) => fixtureControl(url, body),
    stats: () => fixtureStats(url),
    stop: () => proc.stop(),
  };
}

export async function fixtureControl(fixtureUrl, body) {
  const res = await fetch(`${fixtureUrl}/__control`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== 200) throw new Error(`/__control failed: ${res.status} ${await res.text()}`);
  return res.json();
}

export async function fixtureStats(fixtureUrl) {
  const res = await fetch(`${fixtureUrl}/__stats`);
  if (res.status !== 200) throw new Error(`/__stats failed: ${res.status}`);
  return res.json();
}

// ---------------------------------------------------------------------------
// sockgate
// ---------------------------------------------------------------------------
export function sockgateEnv({ port, upstreamUrl, publishSocket, env = {} }) {
  const base = {
    SIDECAR_SERVER__HOST: '127.0.0.1',
    SIDECAR_SERVER__PORT: String(port),
    SIDECAR_UPSTREAM__URL: upstreamUrl,
    SIDECAR_PUBLISH__SOCKET: publishSocket,
    SIDECAR_REALTIME__PATH: '/socket.io',
    SIDECAR_REALTIME__TRANSPORTS: '["polling","websocket"]',
    SIDECAR_REALTIME__ALLOWED_ORIGINS: '["http://allowed.test"]',
    SIDECAR_AUTH__SESSION_PATH: '/api/session',
    SIDECAR_AUTH__USER_ID_POINTER: '/userId',
    SIDECAR_AUTH__CACHE_TTL_MS: '30000',
    SIDECAR_AUTH__NEGATIVE_TTL_MS: '5000',
    SIDECAR_AUTH__MAX_CONCURRENT: '32',
    SIDECAR_AUTH__REVALIDATE_INTERVAL_MS: '300000',
    SIDECAR_AUTH__TIMEOUT_MS: '5000',
    // SOCKGATE_TEST_LOG_FILTER=debug (or e.g. sockgate=debug,socketioxide=debug) for more detail.
    SIDECAR_LOG__FILTER: process.env.SOCKGATE_TEST_LOG_FILTER || 'info',
    // SOCKGATE_TEST_RUNTIME=single: the one-thread runtime (and its direct WebSocket writes)
    // on a machine with more CPUs, as tests/run.sh does for the WebSocket edge files.
    SIDECAR_SERVER__RUNTIME: process.env.SOCKGATE_TEST_RUNTIME,
  };
  // Drop inherited SIDECAR_* so the developer's shell cannot change the tests.
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('SIDECAR_')),
  );
  const merged = { ...inherited, NO_COLOR: '1', ...base, ...env };
  for (const [k, v] of Object.entries(merged)) if (v === undefined || v === null) delete merged[k];
  return merged;
}

/** Spawns sockgate without waiting for readiness. */
export function spawnSockgate({ port, upstreamUrl, publishSocket, env = {}, args = [] }) {
  if (!fs.existsSync(SOCKGATE_BIN)) {
    throw new Error(
      `sockgate binary not found at ${SOCKGATE_BIN} (run \`cargo build\` or set SOCKGATE_BIN)`,
    );
  }
  return new ManagedProcess(`sockgate:${port}`, SOCKGATE_BIN, args, {
    // An empty working directory: sockgate reads ./sidecar.toml when present, and the
    // repository's example file must not change what the tests configure.
    cwd: tmpDir('sockgate-cwd-'),
    env: sockgateEnv({ port, upstreamUrl, publishSocket, env }),
  });
}

/** Starts sockgate and waits until its public port accepts TCP and the publish socket exists. */
export async function startSockgate({ port, upstreamUrl, publishSocket, env = {}, args = [] } = {}) {
  port ??= await freePort();
  publishSocket ??= path.join(tmpDir(), 'sockgate.sock');
  const proc = spawnSockgate({ port, upstreamUrl, publishSocket, env, args });
  try {
    await waitFor(
      async () => {
        if (proc.exited) throw new Error('sockgate exited early');
        return (await tcpAccepts(port)) && isSocketFile(publishSocket);
      },
      { message: `sockgate to accept TCP on 127.0.0.1:${port} and create ${publishSocket}` },
    );
  } catch (e) {
    await proc.stop('SIGKILL');
    throw new Error(`${e.message}\n--- sockgate output ---\n${proc.text()}`);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    publishSocket,
    proc,
    stop: (signal) => proc.stop(signal),
  };
}

function isSocketFile(p) {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

/**
 * Fixture + sockgate in front of it.
 * options.env: extra SIDECAR_* overrides; options.fixtureEnv: env for the fixture;
 * options.upstreamUrl: point sockgate elsewhere (no fixture is started then).
 */
export async function startStack({ env = {}, fixtureEnv = {}, upstreamUrl } = {}) {
  const fixture = upstreamUrl ? null : await startFixture({ env: fixtureEnv });
  const sg = await startSockgate({ upstreamUrl: upstreamUrl ?? fixture.url, env });
  return {
    url: sg.url,
    port: sg.port,
    publishSocket: sg.publishSocket,
    sockgate: sg.proc,
    fixture,
    fixtureUrl: fixture?.url,
    control: (body) => fixtureControl(fixture.url, body),
    fixtureStats: () => fixtureStats(fixture.url),
    publishApi: (method, p, body, opts) => publishApi(sg.publishSocket, method, p, body, opts),
    publish: (msg) => publishOk(sg.publishSocket, msg),
    async stop() {
      await sg.stop();
      if (fixture) await fixture.stop();
    },
  };
}

// ---------------------------------------------------------------------------
// Publish API client (HTTP/1.1 over the Unix socket)
// ---------------------------------------------------------------------------
/**
 * body: object (JSON-encoded), string/Buffer (sent raw), or undefined.
 * Resolves {status, headers, text, json}. json is null if the body is not JSON.
 */
export function publishApi(
  socketPath,
  method,
  p,
  body,
  { headers = {}, timeout = DEFAULT_TIMEOUT_MS, chunked = false, expectContinue = false } = {},
) {
  return new Promise((resolve, reject) => {
    let payload;
    if (body === undefined) payload = undefined;
    else if (typeof body === 'string' || Buffer.isBuffer(body)) payload = Buffer.from(body);
    else payload = Buffer.from(JSON.stringify(body));
    const hdrs = { ...headers };
    if (payload) {
      hdrs['content-type'] ??= 'application/json';
      if (chunked) hdrs['transfer-encoding'] = 'chunked';
      else hdrs['content-length'] = payload.length;
    }
    // With `Expect: 100-continue` the body is only sent once the server asks for it, so a
    // server refusing early (413) is seen as a response instead of a write error.
    if (payload && expectContinue) hdrs.expect = '100-continue';
    let settled = false;
    const req = http.request({ socketPath, method, path: p, headers: hdrs, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => finish(e));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        try {
          json = JSON.parse(text);
        } catch {}
        finish(null, { status: res.statusCode, headers: res.headers, text, json });
      });
    });
    const timer = setTimeout(() => {
      finish(new Error(`publish API ${method} ${p} timed out after ${timeout} ms`));
      req.destroy();
    }, timeout);
    function finish(err, value) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value);
    }
    // The server may answer (e.g. 413) and close before the whole body is
    // written; an EPIPE/ECONNRESET after a response has started is not an error.
    req.on('error', (e) => {
      if (req.res) return;
      finish(e);
    });
    if (payload && expectContinue) {
      req.once('continue', () => req.end(payload));
      req.flushHeaders();
    } else {
      if (payload) req.write(payload);
      req.end();
    }
  });
}

/** POST /publish and assert 200 {ok:true}; returns the JSON body. */
export async function publishOk(socketPath, msg) {
  const r = await publishApi(socketPath, 'POST', '/publish', msg);
  if (r.status !== 200 || !r.json || r.json.ok !== true) {
    throw new Error(`publish ${JSON.stringify(msg)} failed: ${r.status} ${r.text}`);
  }
  return r.json;
}

// ---------------------------------------------------------------------------
// Socket.IO client helpers
// ---------------------------------------------------------------------------
/** The resident memory of process `pid`, in KiB. */
export function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

/** Creates a socket.io-client socket (reconnection off, tracked for cleanup). */
export function client(url, { cookie, origin, headers = {}, ...opts } = {}) {
  const extraHeaders = { ...headers };
  if (cookie !== undefined) extraHeaders.cookie = cookie;
  if (origin !== undefined) extraHeaders.origin = origin;
  const socket = io(url, {
    reconnection: false,
    forceNew: true,
    timeout: 5000,
    extraHeaders,
    ...opts,
  });
  registry.sockets.add(socket);
  socket.on('disconnect', () => {});
  return socket;
}

/** Connects and resolves with the connected socket; rejects with the connect_error. */
export function connect(url, options = {}, timeout = DEFAULT_TIMEOUT_MS) {
  const socket = client(url, options);
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket));
      socket.once('connect_error', (err) => {
        socket.close();
        const e = new Error(`connect_error: ${err.message}`);
        e.cause = err;
        reject(e);
      });
    }),
    timeout,
    `socket.io connect to ${url}`,
  ).catch((e) => {
    socket.close();
    throw e;
  });
}

/** Expects the connection to fail; resolves with the connect_error error object. */
export function connectError(url, options = {}, timeout = DEFAULT_TIMEOUT_MS) {
  const socket = client(url, options);
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('connect', () => {
        socket.close();
        reject(new Error('expected connect_error but the socket connected'));
      });
      socket.once('connect_error', (err) => {
        socket.close();
        resolve(err);
      });
    }),
    timeout,
    `connect_error from ${url}`,
  ).finally(() => socket.close());
}

/**
 * The HTTP status that refused a handshake, from socket.io-client's connect_error: the XHR
 * status over long-polling, "Unexpected server response: N" over WebSocket. A refusal that
 * came as a Socket.IO CONNECT error (an open session) gives its message instead.
 */
export function refusedWith(err) {
  if (typeof err.description === 'number') return err.description;
  const m = /Unexpected server response: (\d+)/.exec(err.description?.message ?? '');
  return m ? Number(m[1]) : err.message;
}

/** Resolves with the first argument of the next `event` on `socket`. */
export function nextEvent(socket, event, timeout = 5000) {
  let handler;
  return withTimeout(
    new Promise((resolve) => {
      handler = (first) => resolve(first);
      socket.once(event, handler);
    }),
    timeout,
    `event "${event}" on socket ${socket.id ?? '(unconnected)'}`,
  ).finally(() => socket.off(event, handler));
}

/** Records every event received by `socket` as {event, args}. */
export function recorder(socket) {
  // sockgate sends a room's messages as (data, {offset, room}) to sockets whose handshake asked
  // for offsets, else as (data); handlers see `data` first either way. `events` keeps the payload only; `metas` keeps the second argument.
  const events = [];
  const metas = [];
  socket.onAny((event, data, meta) => {
    events.push({ event, args: [data] });
    metas.push(meta);
  });
  return {
    events,
    metas,
    /** Events named `name`, as their first argument. */
    of: (name) => events.filter((e) => e.event === name).map((e) => e.args[0]),
    waitCount: (n, message = `${n} events`, timeout = 5000) =>
      waitFor(() => events.length >= n, { timeout, message }),
    waitFor: (pred, message = 'matching event', timeout = 5000) =>
      waitFor(() => events.find(pred), { timeout, message }),
  };
}

export function closeAll(sockets) {
  for (const s of sockets) {
    try {
      s.close();
    } catch {}
    registry.sockets.delete(s);
  }
}

/** A client that remembers the last offset it saw and reports it on every (re)connect. */
export function recoveringClient(url, cookie, opts = {}) {
  const state = { lastOffset: null };
  const socket = client(url, {
    cookie,
    transports: ['websocket'],
    autoConnect: false,
    auth: (cb) => cb({ offset: state.lastOffset }),
    ...opts,
  });
  socket.onAny((_event, _data, meta) => {
    if (meta && typeof meta.offset === 'string') state.lastOffset = meta.offset;
  });
  return { socket, state };
}

/** Connects a client made with `autoConnect: false`; resolves on `connect`. */
export async function connected(socket) {
  const done = nextEvent(socket, 'connect', 5000);
  socket.connect();
  await done;
}

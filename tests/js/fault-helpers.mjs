// Helpers for tests/js/faults.test.mjs (fault injection: dying app, restarts, storms,
// hostile input, SIGTERM under load). Built on harness.mjs, which is not modified here.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import {
  REPO_ROOT,
  startFixture,
  publishApi,
  connect,
  closeAll,
  withTimeout,
  waitFor,
} from './harness.mjs';

const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
export const WebSocket = fixtureRequire('ws');

/**
 * One HTTP/1.1 GET that never hangs: resolves (never rejects) with
 * {status, headers, bytes, body, error, aborted, ms} after the response ends, errors, or
 * `timeout` passes (then error = 'timeout'). `agent` defaults to a fresh connection.
 */
export function httpGet(url, { headers = {}, agent = false, timeout = 10_000 } = {}) {
  const started = Date.now();
  return new Promise((resolve) => {
    let settled = false;
    const result = { status: null, headers: null, bytes: 0, body: '', error: null, aborted: false };
    const chunks = [];
    const finish = (patch = {}) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      Object.assign(result, patch);
      result.body = Buffer.concat(chunks).toString('utf8');
      result.ms = Date.now() - started;
      resolve(result);
    };
    const req = http.get(url, { headers, agent }, (res) => {
      result.status = res.statusCode;
      result.headers = res.headers;
      res.on('data', (c) => {
        result.bytes += c.length;
        if (chunks.length < 64) chunks.push(c);
      });
      res.on('aborted', () => (result.aborted = true));
      res.on('error', (e) => finish({ error: e.code || e.message }));
      res.on('end', () => finish());
      res.on('close', () => finish(res.complete ? {} : { error: result.error ?? 'incomplete' }));
    });
    req.on('error', (e) => finish({ error: e.code || e.message }));
    const timer = setTimeout(() => {
      finish({ error: 'timeout' });
      req.destroy();
    }, timeout);
  });
}

/**
 * Writes `chunks` (strings/Buffers; a number means "sleep that many ms") to a raw TCP
 * connection and collects what comes back until the server closes it or `timeout` passes.
 * Resolves {data, closedBy: 'end'|'reset'|'error'|'timeout', ms, closedAtMs}.
 */
export function rawExchange(port, chunks, { timeout = 10_000, host = '127.0.0.1' } = {}) {
  const started = Date.now();
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const data = [];
    let done = false;
    const finish = (closedBy) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({
        data: Buffer.concat(data).toString('latin1'),
        closedBy,
        ms: Date.now() - started,
      });
    };
    sock.on('data', (d) => data.push(d));
    sock.on('end', () => finish('end'));
    sock.on('close', () => finish('end'));
    sock.on('error', (e) => finish(e.code === 'ECONNRESET' ? 'reset' : `error:${e.code || e.message}`));
    const timer = setTimeout(() => finish('timeout'), timeout);
    sock.once('connect', async () => {
      for (const c of chunks) {
        if (done) return;
        if (typeof c === 'number') await new Promise((r) => setTimeout(r, c));
        else if (!sock.destroyed) sock.write(c);
      }
    });
  });
}

/** True when nothing accepts TCP on `port` (ECONNREFUSED), false when something does. */
export function tcpRefused(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    sock.setTimeout(2000, () => {
      sock.destroy();
      resolve(false);
    });
    sock.once('connect', () => {
      sock.destroy();
      resolve(false);
    });
    sock.once('error', (e) => resolve(e.code === 'ECONNREFUSED'));
  });
}

/** Parses Prometheus text into a Map "name{labels}" → number. */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^(\S+?(?:\{[^}]*\})?)\s+(\S+)/);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/** GET /metrics on the publish socket, parsed. */
export async function metrics(publishSocket) {
  const r = await publishApi(publishSocket, 'GET', '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return parseMetrics(r.text);
}

/** Restarts the fixture on the same port (the old process must have exited). */
export async function restartFixture(port) {
  return startFixture({ port });
}

/**
 * Proves the process still does its job: a fresh socket connects with `cookie` and receives
 * a publish to its user. Closes the socket afterwards. The publish is retried until it finds
 * the socket in its room (with message history on, the room is joined just after the client
 * sees "connect"), and only the event's first argument is compared (history adds metadata).
 */
export async function assertHealthy(stack, { cookie = 'sid=user-healthcheck', transports } = {}) {
  const userId = cookie.replace(/^sid=user-/, '');
  const sock = await connect(stack.url, { cookie, ...(transports ? { transports } : {}) });
  try {
    const received = [];
    sock.on('notification', (d) => received.push(d));
    const sent = [];
    await waitFor(
      async () => {
        const data = { healthy: `${Date.now()}-${sent.length}` };
        sent.push(data.healthy);
        const res = await stack.publish({ userId, event: 'notification', data });
        return res.recipients >= 1;
      },
      { timeout: 5000, interval: 50, message: `a publish to user ${userId} to find its socket` },
    );
    await waitFor(() => received.some((d) => d && sent.includes(d.healthy)), {
      timeout: 5000,
      message: `the health publish to reach user ${userId}`,
    });
  } finally {
    closeAll([sock]);
  }
}

/**
 * Opens a raw Engine.IO WebSocket (no socket.io-client). Resolves {ws, messages, closed}
 * once the Engine.IO OPEN packet arrived; `closed` resolves with {code, reason, ms} where
 * ms counts from the moment `markSent()` was last called.
 */
export function rawEngineSocket(url, { cookie, timeout = 5000 } = {}) {
  const wsUrl = `${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`;
  const ws = new WebSocket(wsUrl, { headers: cookie ? { cookie } : {} });
  const messages = [];
  let sentAt = Date.now();
  let errorSeen = null;
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) =>
      resolve({ code, reason: reason.toString(), error: errorSeen, ms: Date.now() - sentAt }),
    );
  });
  ws.on('error', (e) => (errorSeen = e.message));
  const opened = new Promise((resolve, reject) => {
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? data : data.toString();
      messages.push(text);
      if (typeof text === 'string' && text.startsWith('0')) resolve();
    });
    closed.then((c) => reject(new Error(`raw websocket closed before OPEN: ${JSON.stringify(c)}`)));
  });
  return withTimeout(opened, timeout, `Engine.IO OPEN on ${wsUrl}`).then(() => ({
    ws,
    messages,
    closed,
    markSent: () => (sentAt = Date.now()),
  }));
}

/** Engine.IO polling handshake; resolves {sid, status, text}. */
export async function pollingHandshake(url, cookie) {
  const r = await httpGet(`${url}/socket.io/?EIO=4&transport=polling`, {
    headers: cookie ? { cookie } : {},
  });
  let sid = null;
  if (r.status === 200 && r.body.startsWith('0')) sid = JSON.parse(r.body.slice(1)).sid;
  return { sid, status: r.status, text: r.body };
}

/** POST raw `body` to a polling session; resolves {status, text, error, ms}. */
export function pollingPost(url, sid, body, { cookie, timeout = 10_000 } = {}) {
  const started = Date.now();
  return new Promise((resolve) => {
    const payload = Buffer.isBuffer(body) ? body : Buffer.from(body);
    let settled = false;
    const finish = (v) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...v, ms: Date.now() - started });
    };
    const req = http.request(
      `${url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`,
      {
        method: 'POST',
        agent: false,
        headers: {
          'content-type': 'text/plain;charset=UTF-8',
          'content-length': payload.length,
          ...(cookie ? { cookie } : {}),
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          finish({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8'), error: null }),
        );
        res.on('error', (e) => finish({ status: res.statusCode, text: '', error: e.code || e.message }));
      },
    );
    req.on('error', (e) => {
      // A server refusing an oversized body may answer and close before the body is written.
      if (req.res) return;
      finish({ status: null, text: '', error: e.code || e.message });
    });
    const timer = setTimeout(() => {
      finish({ status: null, text: '', error: 'timeout' });
      req.destroy();
    }, timeout);
    req.end(payload);
  });
}

export function fileExists(p) {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * A Socket.IO client that connects (raw WebSocket, namespace CONNECT acknowledged) and then
 * stops reading while its TCP connection stays open: the kernel buffers fill and the server's
 * writes block. Resolves {ws, messages, closed, clientPort, resume()}.
 */
export async function stalledSocketIoClient(url, { cookie, timeout = 5000 } = {}) {
  const raw = await rawEngineSocket(url, { cookie, timeout });
  raw.ws.send('40');
  await waitFor(() => raw.messages.some((m) => typeof m === 'string' && m.startsWith('40')), {
    timeout,
    message: 'the namespace CONNECT to be acknowledged',
  });
  const clientPort = raw.ws._socket.localPort;
  raw.ws.pause();
  return { ...raw, clientPort, resume: () => raw.ws.resume() };
}

/**
 * Whether the server side of the TCP connection from 127.0.0.1:`clientPort` to `serverPort`
 * is still ESTABLISHED (read from /proc/net/tcp: the server's view, not the client's).
 */
export function serverSideEstablished(serverPort, clientPort) {
  const hex = (n) => n.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const [, local, remote, state] = line.trim().split(/\s+/);
      if (!local || !remote) continue;
      if (local.endsWith(`:${hex(serverPort)}`) && remote.endsWith(`:${hex(clientPort)}`) && state === '01') {
        return true;
      }
    }
  }
  return false;
}

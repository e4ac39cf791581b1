// @sockgate/client — publish to sockgate over its Unix socket.
// Dependency-free; uses node:http with a keep-alive agent.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { lstatSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

/**
 * Where sockgate listens when publish.socket is not set, by the same rule sockgate uses:
 * `$XDG_RUNTIME_DIR/sockgate/sockgate.sock`, else `/tmp/sockgate-<uid>/sockgate.sock`
 * (a private per-user directory, so another local user cannot squat the socket).
 * @param {NodeJS.ProcessEnv} [env]
 * @param {number} [uid]
 */
export function defaultSocketPath(env = process.env, uid = process.geteuid?.() ?? process.getuid?.() ?? 0) {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime) return path.join(runtime, 'sockgate', 'sockgate.sock');
  return `/tmp/sockgate-${uid}/sockgate.sock`;
}

export const DEFAULT_SOCKET_PATH = defaultSocketPath();
const DEFAULT_TIMEOUT_MS = 5000;
const DEFAULT_BUSY_RETRY_MS = 5000;
const MIN_BUSY_DELAY_MS = 50;
const NOT_RUNNING_CODES = new Set(['ENOENT', 'ECONNREFUSED']);

/**
 * Error thrown for every failed sockgate call.
 * - `code`: 'ENOENT' / 'ECONNREFUSED' (not running), 'SOCKGATE_TIMEOUT',
 *   'SOCKGATE_HTTP_ERROR', 'SOCKGATE_BAD_RESPONSE', 'SOCKGATE_CLOSED', or the
 *   underlying socket error code.
 * - `status` / `error` / `body`: set for HTTP 4xx/5xx answers (`error` is the
 *   server's error text).
 */
export class SockgateError extends Error {
  constructor(message, { code, status, error, body, cause, socketPath } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'SockgateError';
    if (code !== undefined) this.code = code;
    if (status !== undefined) this.status = status;
    if (error !== undefined) this.error = error;
    if (body !== undefined) this.body = body;
    if (socketPath !== undefined) this.socketPath = socketPath;
  }
}

function normalizeId(id) {
  return typeof id === 'number' && Number.isFinite(id) ? String(id) : id;
}

/** Numbers are accepted as user ids and sent as strings. */
function normalizeMessage(msg) {
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    throw new TypeError('sockgate: a publish message must be an object');
  }
  const out = { ...msg };
  if ('userId' in out) out.userId = normalizeId(out.userId);
  if (Array.isArray(out.userIds)) out.userIds = out.userIds.map(normalizeId);
  return out;
}

function userPath(id, suffix = '') {
  const s = normalizeId(id);
  if (typeof s !== 'string' || s === '') {
    throw new TypeError('sockgate: userId must be a non-empty string or number');
  }
  return `/users/${encodeURIComponent(s)}${suffix}`;
}

function roomPath(room) {
  if (typeof room !== 'string' || room === '') {
    throw new TypeError('sockgate: room must be a non-empty string');
  }
  return `/rooms/${encodeURIComponent(room)}`;
}

/**
 * The default socket's directory must be private (like sockgate, which refuses to start
 * otherwise): owned by this user and writable by nobody else. Another local user who created
 * it first could put their own socket there and receive every publish, payloads included.
 * Returns an error message, or null when the directory is fine or does not exist yet.
 */
function unsafeSocketDir(dir) {
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    return null; // not there: connecting says sockgate is not running
  }
  const uid = process.geteuid?.() ?? process.getuid?.();
  if (!st.isDirectory()) return `${dir} is not a directory`;
  if (uid !== undefined && st.uid !== uid) return `${dir} belongs to uid ${st.uid}, not to this user (uid ${uid})`;
  if ((st.mode & 0o022) !== 0) return `${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  return null;
}

/**
 * @param {{ socketPath?: string, timeoutMs?: number, busyRetryMs?: number, agent?: import('node:http').Agent, env?: NodeJS.ProcessEnv }} [options]
 * Without `socketPath` (and without `SOCKGATE_SOCKET`), the default socket is used, and its
 * directory is checked to be private before each connection.
 * `busyRetryMs`: how long a call may wait in all, after `503` + `Retry-After` answers (a
 * cluster instance too far behind: nothing of the request was kept), before it fails with that
 * 503; 0 = fail at the first.
 */
export function createClient({
  socketPath: givenPath,
  timeoutMs = DEFAULT_TIMEOUT_MS,
  busyRetryMs = DEFAULT_BUSY_RETRY_MS,
  agent,
  env = process.env,
} = {}) {
  const usesDefault = givenPath === undefined && !env.SOCKGATE_SOCKET;
  const socketPath = givenPath ?? (env.SOCKGATE_SOCKET || defaultSocketPath(env));
  const socketDir = path.dirname(socketPath);
  const ownAgent = !agent;
  const httpAgent = agent ?? new http.Agent({ keepAlive: true });
  let closed = false;

  function once(method, path, payload) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      };
      const unsafe = usesDefault && unsafeSocketDir(socketDir);
      if (unsafe) {
        settled = true;
        return reject(new SockgateError(
          `sockgate: refusing the default socket ${socketPath}: ${unsafe} — another user could receive your publishes; remove it, or set SOCKGATE_SOCKET`,
          { code: 'SOCKGATE_UNSAFE_SOCKET_DIR', socketPath },
        ));
      }
      const headers = { accept: 'application/json' };
      if (payload !== undefined) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = Buffer.byteLength(payload);
      }
      const req = http.request({ socketPath, method, path, headers, agent: httpAgent });

      const timer = setTimeout(() => {
        const err = new SockgateError(
          `sockgate did not respond within ${timeoutMs}ms (${method} ${path} on ${socketPath})`,
          { code: 'SOCKGATE_TIMEOUT', socketPath },
        );
        fail(err);
        req.destroy(err);
      }, timeoutMs);

      req.on('error', (err) => {
        if (settled) return;
        // A pooled keep-alive socket the server already closed: safe to retry once,
        // the request never reached the server.
        if (req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          err.retryable = true;
          return fail(err);
        }
        if (NOT_RUNNING_CODES.has(err.code)) {
          return fail(new SockgateError(
            `sockgate is not running: cannot connect to ${socketPath} (${err.code}) — start sockgate or set SOCKGATE_SOCKET`,
            { code: err.code, cause: err, socketPath },
          ));
        }
        fail(new SockgateError(
          `sockgate request failed: ${method} ${path} on ${socketPath}: ${err.message}`,
          { code: err.code, cause: err, socketPath },
        ));
      });

      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => fail(new SockgateError(
          `sockgate response failed: ${method} ${path}: ${err.message}`,
          { code: err.code, cause: err, socketPath },
        )));
        res.on('end', () => {
          if (settled) return;
          const text = Buffer.concat(chunks).toString('utf8');
          let body;
          if (text !== '') {
            try {
              body = JSON.parse(text);
            } catch {
              body = undefined;
            }
          }
          const status = res.statusCode;
          if (status >= 400 || (body && body.ok === false)) {
            const errorText = (body && typeof body.error === 'string' && body.error)
              || text.trim() || res.statusMessage || 'unknown error';
            const err = new SockgateError(
              `sockgate ${method} ${path} failed with ${status}: ${errorText}`,
              { code: 'SOCKGATE_HTTP_ERROR', status, error: errorText, body: body ?? text, socketPath },
            );
            const retryAfter = Number(res.headers['retry-after']);
            if (status === 503 && Number.isFinite(retryAfter) && retryAfter >= 0) err.retryAfterMs = retryAfter * 1000;
            return fail(err);
          }
          if (body === undefined && text !== '') {
            return fail(new SockgateError(
              `sockgate ${method} ${path} returned a non-JSON body (${status})`,
              { code: 'SOCKGATE_BAD_RESPONSE', status, body: text, socketPath },
            ));
          }
          settled = true;
          clearTimeout(timer);
          resolve(body ?? { ok: true });
        });
      });

      req.end(payload);
    });
  }

  async function call(method, path, body) {
    if (closed) {
      throw new SockgateError('sockgate client is closed', { code: 'SOCKGATE_CLOSED', socketPath });
    }
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const waitUntil = Date.now() + busyRetryMs;
    for (;;) {
      try {
        try {
          return await once(method, path, payload);
        } catch (err) {
          if (!err.retryable) throw err;
          return await once(method, path, payload);
        }
      } catch (err) {
        // Busy (503 + Retry-After): nothing was kept; the same request again once the delay is
        // over (at least MIN_BUSY_DELAY_MS: never a tight loop), while the wait stays within
        // busyRetryMs (0: never).
        const delay = Math.max(err.retryAfterMs ?? 0, MIN_BUSY_DELAY_MS);
        if (err.retryAfterMs === undefined || closed || busyRetryMs <= 0 || Date.now() + delay > waitUntil) throw err;
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  return {
    socketPath,
    timeoutMs,
    agent: httpAgent,
    /** POST /publish — exactly one of userId / userIds / room / broadcast. → { ok, recipients } */
    async publish(msg) {
      return call('POST', '/publish', normalizeMessage(msg));
    },
    /** POST /publish/batch → { ok, messages } */
    async publishBatch(msgs) {
      if (!Array.isArray(msgs)) throw new TypeError('sockgate: publishBatch expects an array of messages');
      return call('POST', '/publish/batch', { messages: msgs.map(normalizeMessage) });
    },
    /** POST /users/{id}/disconnect → { ok, disconnected } */
    async disconnectUser(id) {
      return call('POST', userPath(id, '/disconnect'));
    },
    /** GET /users/{id} → { userId, online, sockets, scope, rooms } */
    async userStatus(id) {
      return call('GET', userPath(id));
    },
    /** GET /rooms/{room} → { room, sockets, users, members?, scope } (members: presence rooms only) */
    async room(room) {
      return call('GET', roomPath(room));
    },
    /**
     * The members of a presence room: GET /rooms/{room} → its `members` ([{ id, info }], one per
     * user). A room that is not a presence room has no member list: [] then.
     */
    async presence(room) {
      const res = await call('GET', roomPath(room));
      return Array.isArray(res?.members) ? res.members : [];
    },
    /** GET /stats */
    async stats() {
      return call('GET', '/stats');
    },
    /** GET /health → { ok: true } */
    async health() {
      return call('GET', '/health');
    },
    /** Drops pooled connections; further calls reject. */
    close() {
      closed = true;
      if (ownAgent) httpAgent.destroy();
    },
  };
}

let defaultClient;

/** The lazily-created client used by the top-level functions (reads SOCKGATE_SOCKET on first use). */
export function getDefaultClient() {
  defaultClient ??= createClient();
  return defaultClient;
}

/** Closes the default client; the next top-level call creates a fresh one. */
export function closeDefaultClient() {
  if (defaultClient) defaultClient.close();
  defaultClient = undefined;
}

export function publish(msg) {
  return getDefaultClient().publish(msg);
}

export function publishBatch(msgs) {
  return getDefaultClient().publishBatch(msgs);
}

export function disconnectUser(id) {
  return getDefaultClient().disconnectUser(id);
}

export function userStatus(id) {
  return getDefaultClient().userStatus(id);
}

export function room(name) {
  return getDefaultClient().room(name);
}

export function presence(name) {
  return getDefaultClient().presence(name);
}

/** Same signature as the app's old Pusher helper: emits `notification` to room user:{userId}. */
export function pushNotification(userId, payload) {
  return getDefaultClient().publish({ userId: normalizeId(userId), event: 'notification', data: payload });
}

/**
 * Whether a sockgate webhook is genuine: `signatureHeader` (the `X-Sockgate-Signature` header,
 * `sha256=<hex>`) is the HMAC-SHA256 of the exact request `body` (the raw bytes, before any
 * JSON parsing) under `secret` (`webhooks.secret`). Compared in constant time.
 * @param {string | Buffer | Uint8Array} body
 * @param {string | string[] | undefined | null} signatureHeader
 * @param {string | Buffer} secret
 * @returns {boolean}
 */
export function verifyWebhook(body, signatureHeader, secret) {
  if (typeof signatureHeader !== 'string' || !secret || secret.length === 0) return false;
  if (body == null) return false;
  const expected = Buffer.from(
    `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`,
    'utf8',
  );
  const given = Buffer.from(signatureHeader.trim(), 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export default {
  verifyWebhook,
  createClient,
  getDefaultClient,
  closeDefaultClient,
  publish,
  publishBatch,
  disconnectUser,
  userStatus,
  room,
  presence,
  pushNotification,
  SockgateError,
};

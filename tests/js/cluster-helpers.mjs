// Helpers for tests/js/cluster.test.mjs: a throwaway redis-server per test file, and a way to
// run sockgate with its stdout and stderr kept apart (harness.mjs merges them).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, afterEach } from 'node:test';
import net from 'node:net';
import {
  SOCKGATE_BIN, connected, freePort, recorder, recoveringClient, sockgateEnv, startSockgate, tmpDir, waitFor, withTimeout,
} from './harness.mjs';

const VERBOSE = !!(process.env.SOCKGATE_TEST_VERBOSE || process.env.SOCKGATE_TEST_LOG);

/** The redis-server executable on PATH, or null. */
export function findRedisServer() {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, 'redis-server');
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {}
  }
  return null;
}

const children = new Set(); // {name, child, output, exited}

function track(name, child) {
  const rec = { name, child, output: [], exited: false, code: null, signal: null };
  rec.exitPromise = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      rec.exited = true;
      rec.code = code;
      rec.signal = signal;
      rec.output.push(`[${name}] exited code=${code} signal=${signal}\n`);
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      rec.exited = true;
      rec.output.push(`[${name}] spawn error: ${err.message}\n`);
      resolve({ code: null, signal: null, error: err });
    });
  });
  children.add(rec);
  return rec;
}

afterEach((t) => {
  if (t.passed === false) {
    for (const c of children) {
      const text = c.output.join('');
      process.stderr.write(`----- ${c.name} (pid ${c.child.pid}) output -----\n${text.slice(-10_000) || '(no output)\n'}`);
    }
  }
  // Forget processes that ended during the test; their output was dumped if needed.
  for (const c of children) if (c.exited) children.delete(c);
});

after(async () => {
  await Promise.all(
    [...children].map(async (c) => {
      if (!c.exited) {
        try {
          c.child.kill('SIGKILL');
        } catch {}
        await withTimeout(c.exitPromise, 3000, `${c.name} to exit`).catch(() => {});
      }
    }),
  );
  children.clear();
});

/** Sends PING over RESP; resolves true on +PONG. */
export function redisPing(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    let buf = '';
    const done = (ok) => {
      sock.removeAllListeners();
      sock.on('error', () => {});
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
    sock.once('error', () => done(false));
    sock.once('close', () => done(false));
  });
}

/**
 * Starts `redis-server` on 127.0.0.1:`port` (no persistence; `args` appended, e.g. cluster mode)
 * and waits until it answers PING. Returns {port, url, pid, kill(signal), exited, waitExit()}.
 */
export async function startRedis(port, { timeout = 10_000, args = [] } = {}) {
  const dir = tmpDir('sockgate-redis-');
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const rec = track(`redis:${port}`, child);
  for (const s of [child.stdout, child.stderr]) {
    s.setEncoding('utf8');
    s.on('data', (d) => {
      rec.output.push(d);
      if (VERBOSE) process.stderr.write(`[redis:${port}] ${d}`);
    });
  }
  await waitFor(
    async () => {
      if (rec.exited) throw new Error(`redis-server exited early:\n${rec.output.join('')}`);
      return redisPing(port);
    },
    { timeout, message: `redis-server to answer PING on 127.0.0.1:${port}` },
  );
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid,
    get exited() {
      return rec.exited;
    },
    text: () => rec.output.join(''),
    /** Sends `signal` and waits (bounded) for the process to be gone. */
    async kill(signal = 'SIGKILL') {
      if (!rec.exited) {
        try {
          child.kill(signal);
        } catch {}
      }
      await withTimeout(rec.exitPromise, 5000, `redis-server ${port} to exit`);
    },
  };
}

/** Why a Redis Cluster cannot be started here (no redis-server or redis-cli), or false. */
export function redisClusterUnsupported() {
  if (!findRedisServer()) return 'redis-server is not on PATH (install redis-server to run the Redis Cluster tests)';
  try {
    execFileSync('redis-cli', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'redis-cli is not on PATH (it creates the Redis Cluster)';
  }
  return false;
}

/**
 * Starts a 3-node Redis Cluster on free loopback ports (`--cluster-enabled yes`, joined by
 * `redis-cli --cluster create … --cluster-replicas 0`) and waits for cluster_state:ok.
 * Resolves {nodes, url} (`url`: the redis-cluster:// URL sockgate takes), or {skip} when this
 * redis-server cannot run a cluster.
 */
export async function startRedisCluster() {
  const dir = tmpDir('sockgate-rcluster-');
  const ports = [await freePort(), await freePort(), await freePort()];
  // Each node's cluster bus port is its port + 10000 unless set: from the harness's free
  // ports that lands in the ephemeral range, where a client socket may hold it ("bind:
  // Address already in use" failed the setup). So the bus gets a free port of its own.
  const busPorts = [await freePort(), await freePort(), await freePort()];
  let nodes;
  try {
    nodes = await Promise.all(
      ports.map((p, i) =>
        startRedis(p, {
          args: [
            '--cluster-enabled', 'yes',
            '--cluster-config-file', path.join(dir, `nodes-${p}.conf`),
            '--cluster-port', String(busPorts[i]),
          ],
        }),
      ),
    );
  } catch (e) {
    // A redis-server built without cluster support refuses the option and exits at once.
    // Anything else (a port taken, say) is a failure, not a reason to skip.
    if (/FATAL CONFIG FILE ERROR/.test(String(e.message))) {
      return { skip: `redis-server cannot run a Redis Cluster here: ${String(e.message).split('\n')[0]}` };
    }
    throw e;
  }
  execFileSync(
    'redis-cli',
    ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'],
    { encoding: 'utf8', timeout: 30_000 },
  );
  const info = (p) =>
    execFileSync('redis-cli', ['-p', String(p), 'CLUSTER', 'INFO'], { encoding: 'utf8', timeout: 10_000 });
  await waitFor(() => ports.every((p) => info(p).includes('cluster_state:ok')), {
    timeout: 20_000,
    message: 'every Redis Cluster node to report cluster_state:ok',
  });
  const url = `redis-cluster://127.0.0.1:${ports[0]}?node=127.0.0.1:${ports[1]}&node=127.0.0.1:${ports[2]}`;
  return { nodes, url };
}

/**
 * Runs sockgate with stdout and stderr captured separately (for startup-failure checks).
 * Resolves {code, signal, stdout, stderr, elapsedMs}; SIGKILLs it after `timeout`.
 */
export async function runSockgateToExit({ port, upstreamUrl, publishSocket, env = {}, timeout = 15_000 }) {
  const cwd = tmpDir('sockgate-cwd-');
  const started = Date.now();
  const child = spawn(SOCKGATE_BIN, [], {
    cwd,
    env: sockgateEnv({ port, upstreamUrl, publishSocket, env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const rec = track(`sockgate-exit:${port}`, child);
  const stdout = [];
  const stderr = [];
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    stdout.push(d);
    rec.output.push(d);
  });
  child.stderr.on('data', (d) => {
    stderr.push(d);
    rec.output.push(d);
  });
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    try {
      child.kill('SIGKILL');
    } catch {}
  }, timeout);
  const { code, signal } = await rec.exitPromise;
  clearTimeout(timer);
  // Let the pipes drain.
  await Promise.all(
    [child.stdout, child.stderr].map(
      (s) => new Promise((r) => (s.readableEnded || s.destroyed ? r() : s.once('close', r))),
    ),
  ).catch(() => {});
  return {
    code,
    signal,
    killedByTest: killed,
    stdout: stdout.join(''),
    stderr: stderr.join(''),
    elapsedMs: Date.now() - started,
  };
}

/** The value at quantile `q` (0..1) of `values` (nearest-rank). */
export function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  if (!sorted.length) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx];
}

/**
 * A TCP proxy on a free loopback port in front of 127.0.0.1:`port`, to stall one instance's
 * path to Redis while the others' stay fine. `pause()` stops forwarding in both directions
 * while every TCP connection stays open (nothing is read, so nothing is lost: bytes wait in
 * the kernel's buffers, as with a stopped process); connections opened meanwhile are accepted
 * and held the same way. `resume()` forwards again; `close()` drops every connection.
 * A connection whose one side closes is closed on the other side too.
 */
export async function pausableProxy(port) {
  const pairs = new Set(); // [client, upstream]
  let paused = false;
  const server = net.createServer((client) => {
    const upstream = net.connect({ port, host: '127.0.0.1' });
    const pair = [client, upstream];
    pairs.add(pair);
    for (const [from, to] of [pair, [upstream, client]]) {
      from.on('data', (d) => to.write(d));
      from.on('error', () => {});
      from.on('close', () => {
        pairs.delete(pair);
        to.destroy();
      });
      if (paused) from.pause();
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    port: server.address().port,
    pause() {
      paused = true;
      for (const pair of pairs) for (const s of pair) s.pause();
    },
    resume() {
      paused = false;
      for (const pair of pairs) for (const s of pair) s.resume();
    },
    async close() {
      for (const pair of pairs) for (const s of pair) s.destroy();
      pairs.clear();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Two sockgate instances with the same `env` in front of `fixture`: resolves [A, B]. */
export function startPair(fixture, env) {
  return Promise.all([startSockgate({ upstreamUrl: fixture.url, env }), startSockgate({ upstreamUrl: fixture.url, env })]);
}

/** A user's recovering client (cookie `sid=user-<user>`) on each instance, with its records, connected. */
export async function recoveringClientsOn(instances, user) {
  const out = [];
  for (const inst of instances) {
    const c = recoveringClient(inst.url, `sid=user-${user}`);
    const rec = recorder(c.socket);
    await connected(c.socket);
    out.push({ ...c, rec });
  }
  return out;
}

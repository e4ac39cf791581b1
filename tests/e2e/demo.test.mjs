// The demo's banner: it names the publish socket and prints a curl line that works when
// pasted as is (run here through bash, exactly as printed). The demo logs anyone in without a
// password, so it listens on loopback only unless told otherwise (HOST).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort } from '../js/harness.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(process.env.SOCKGATE_BIN || path.join(REPO, 'target', 'debug', 'sockgate'));

// Whether a TCP connection to host:port is accepted.
function accepts(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 2000 });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
    s.once('timeout', () => { s.destroy(); resolve(false); });
  });
}

test('demo.sh prints the publish socket and a curl line that publishes; it listens on loopback only', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-demo-'));
  const sock = path.join(dir, 'with space', 'sockgate.sock');
  const env = {
    ...process.env,
    SOCKGATE_BIN: BIN,
    PORT: String(await freePort()),
    UPSTREAM_PORT: String(await freePort()),
    SOCKGATE_SOCKET: sock,
    RUST_LOG: 'warn,sockgate=info',
  };
  const demo = spawn(path.join(REPO, 'examples', 'astro', 'demo.sh'), [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  demo.stdout.on('data', (d) => (out += d));
  demo.stderr.on('data', (d) => (out += d));
  const exited = new Promise((resolve) => demo.on('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 90_000;
    let answer = '';
    while (Date.now() < deadline && !/"ok":true/.test(answer)) {
      await new Promise((r) => setTimeout(r, 200));
      const line = out.split('\n').find((l) => l.trim().startsWith('curl --unix-socket'));
      if (!line || !fs.existsSync(sock)) continue;
      answer = spawnSync('bash', ['-c', line], { encoding: 'utf8', timeout: 5000 }).stdout ?? '';
    }
    assert.match(out, new RegExp(`Publish socket: ${sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(answer, /"ok":true/, `the pasted curl line publishes\n--- demo output ---\n${out}`);
    assert.match(out, /sockgate ready.*listen=127\.0\.0\.1:/, `listens on loopback\n--- demo output ---\n${out}`);
    assert.match(out, /HOST=0\.0\.0\.0 /, 'the banner says how to expose it');
    // Reached through this machine's other addresses: refused (when it has any).
    const outside = Object.values(os.networkInterfaces()).flat()
      .filter((a) => a && a.family === 'IPv4' && !a.internal).map((a) => a.address);
    for (const address of outside) {
      assert.equal(await accepts(address, Number(env.PORT)), false, `port ${env.PORT} refused on ${address}`);
    }
  } finally {
    demo.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))]);
    if (code === 'timeout') demo.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

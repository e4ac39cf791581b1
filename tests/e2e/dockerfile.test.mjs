// The Dockerfile cannot be built here (no Docker engine), so this runs what the image runs:
// the final stage's ENV, CMD and HEALTHCHECK, read from the Dockerfile itself, against the
// built example app — so the commands users copy keep working.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort } from '../js/harness.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const APP = path.join(REPO, 'examples', 'astro');
const BIN = path.resolve(process.env.SOCKGATE_BIN || path.join(REPO, 'target', 'debug', 'sockgate'));

/** ENV, CMD and HEALTHCHECK of the Dockerfile's last stage. */
function finalStage() {
  const text = fs.readFileSync(path.join(REPO, 'Dockerfile'), 'utf8').replace(/\\\n\s*/g, ' ');
  const stage = text.slice(text.lastIndexOf('\nFROM '));
  const env = {};
  for (const [, body] of stage.matchAll(/^ENV (.+)$/gm)) {
    for (const [, k, v] of body.matchAll(/(\w+)=(\S+)/g)) env[k] = v;
  }
  const cmd = JSON.parse(stage.match(/^CMD (\[.+\])$/m)[1]);
  const health = JSON.parse(stage.match(/^HEALTHCHECK .*?CMD (\[.+\])$/m)[1]);
  return { env, cmd, health };
}


function get(port, p) {
  return new Promise((resolve) => {
    http
      .get({ host: '127.0.0.1', port, path: p, timeout: 3000 }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      })
      .on('error', () => resolve(null));
  });
}

async function until(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("the image's CMD and HEALTHCHECK work outside Docker", async () => {
  if (!fs.existsSync(path.join(APP, 'dist', 'server', 'entry.mjs'))) {
    assert.equal(spawnSync('npm', ['run', 'build'], { cwd: APP, stdio: 'inherit' }).status, 0);
  }
  const { env, cmd, health } = finalStage();
  assert.equal(cmd[0], 'sockgate');
  assert.equal(health[0], 'node');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-docker-'));
  const port = await freePort();
  const upstream = await freePort();
  const runEnv = {
    ...process.env,
    ...env,
    PORT: String(port),
    SIDECAR_UPSTREAM__URL: `http://127.0.0.1:${upstream}`,
    SIDECAR_PUBLISH__SOCKET: path.join(dir, 'sockgate.sock'),
  };
  let output = '';
  const proc = spawn(BIN, cmd.slice(1), { cwd: APP, env: runEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout.on('data', (d) => (output += d));
  proc.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  after(() => {
    proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const healthy = () => spawnSync(health[0], health.slice(1), { env: runEnv, timeout: 5000 }).status === 0;
  try {
    await until(healthy, 'the HEALTHCHECK to pass');
    assert.equal(await get(port, '/login'), 200, 'the app answers through sockgate on $PORT');
    assert.equal(await get(port, '/'), 302, 'and redirects a visitor without a session');
    proc.kill('SIGTERM');
    assert.equal(await exited, 0, 'a docker stop exits 0');
    assert.equal(healthy(), false, 'the HEALTHCHECK fails once sockgate is gone');
  } catch (e) {
    e.message += `\n--- sockgate output ---\n${output}`;
    throw e;
  }
});

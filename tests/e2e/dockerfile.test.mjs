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

// The build context as Docker sends it: every file not excluded by .dockerignore (matched by
// @balena/dockerignore, the matcher docker-compose and balena use, Docker's own semantics).
test('the build context leaves out target/, .git and host node_modules/dist', async () => {
  const { createRequire } = await import('node:module');
  const fixtureRequire = createRequire(path.join(REPO, 'tests', 'fixture', 'package.json'));
  const ignore = fixtureRequire('@balena/dockerignore')().add(
    fs.readFileSync(path.join(REPO, '.dockerignore'), 'utf8').split('\n'),
  );
  let bytes = 0;
  const sent = [];
  const walk = (rel) => {
    for (const entry of fs.readdirSync(path.join(REPO, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${entry.name}` : entry.name;
      if (ignore.ignores(p)) continue;
      if (entry.isDirectory()) walk(p);
      else if (entry.isFile()) {
        sent.push(p);
        bytes += fs.statSync(path.join(REPO, p)).size;
      }
    }
  };
  walk('');
  for (const prefix of ['target/', '.git/', 'examples/astro/node_modules/', 'examples/astro/dist/', 'tests/fixture/node_modules/']) {
    assert.ok(!sent.some((p) => p.startsWith(prefix)), `${prefix} is in the build context`);
  }
  // What the stages COPY is still there.
  for (const p of ['Cargo.toml', 'Cargo.lock', 'src/main.rs', 'vendor/engineioxide/Cargo.toml', 'examples/astro/package-lock.json', 'clients/node/index.mjs']) {
    assert.ok(sent.includes(p), `${p} must be in the build context`);
  }
  assert.ok(bytes < 20 * 1024 * 1024, `build context is ${(bytes / 1048576).toFixed(1)} MiB`);
  process.stderr.write(`docker build context: ${sent.length} files, ${(bytes / 1048576).toFixed(1)} MiB\n`);
});

test("the Dockerfile's header, app stage and build argument say what they do", () => {
  const text = fs.readFileSync(path.join(REPO, 'Dockerfile'), 'utf8');
  const words = { two: 2, three: 3, four: 4, five: 5 };
  const said = text.match(/adjust the (\w+) lines marked ADAPT/);
  assert.ok(said, 'the header says how many lines to adapt');
  assert.equal(words[said[1]], text.match(/^# ADAPT:/gm).length, 'the header counts the ADAPT lines');
  const app = text.slice(text.indexOf(' AS app'), text.lastIndexOf('\nFROM '));
  const at = (re) => app.search(re);
  assert.ok(at(/^COPY examples\/astro\/package\.json examples\/astro\/package-lock\.json/m) >= 0);
  assert.ok(at(/^RUN npm ci/m) > at(/^COPY examples\/astro\/package\.json/m), 'npm ci after the package files');
  assert.ok(at(/^COPY examples\/astro\/ /m) > at(/^RUN npm ci/m), 'sources after npm ci');
  assert.match(app, /^ARG ALLOWED_HOSTS/m);
  assert.match(app, /ALLOWED_HOSTS="\$ALLOWED_HOSTS" npm run build/);
});

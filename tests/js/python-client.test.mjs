// A client in another language, written for a plain Socket.IO server, works unchanged against
// sockgate (issue 16): python-socketio 5 (tests/python/client.py) over long-polling, WebSocket
// and the upgrade, with a ONE-argument notification handler; refused without a session cookie.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/python-client.test.mjs
//
// The client runs in a virtualenv under target/ (created once, then reused). When python3
// cannot make one or pip cannot reach the package registry, the tests are SKIPPED with the
// reason — never passed — unless SOCKGATE_REQUIRE_PYTHON=1 (set by .ci/run): then they fail.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { REPO_ROOT, startStack, publishOk, waitFor } from './harness.mjs';

const VENV = path.join(REPO_ROOT, 'target', 'python-client-venv');
const PYTHON = path.join(VENV, 'bin', 'python');
const CLIENT = path.join(REPO_ROOT, 'tests', 'python', 'client.py');
const REQUIREMENT = 'python-socketio[client]>=5,<6';

/** Makes the virtualenv if needed; returns null when ready, else why it cannot be. */
function prepareVenv() {
  const importable = () =>
    fs.existsSync(PYTHON) && spawnSync(PYTHON, ['-c', 'import socketio, websocket, requests'], { stdio: 'ignore' }).status === 0;
  if (importable()) return null;
  const venv = spawnSync('python3', ['-m', 'venv', '--clear', VENV], { encoding: 'utf8', timeout: 60_000 });
  if (venv.error) return `python3 is not available (${venv.error.message})`;
  if (venv.status !== 0) return `python3 -m venv failed (install python3-venv): ${venv.stderr.trim().slice(-300)}`;
  const pip = spawnSync(
    PYTHON,
    ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--timeout', '15', '--retries', '1', REQUIREMENT],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (pip.status !== 0 || !importable()) {
    return `pip could not install "${REQUIREMENT}" (no access to the package registry?): ${(pip.stderr || pip.error?.message || '').trim().slice(-300)}`;
  }
  return null;
}

const unavailable = prepareVenv();
const REQUIRED = process.env.SOCKGATE_REQUIRE_PYTHON === '1';
const SKIP = unavailable && !REQUIRED ? `python-socketio client unavailable: ${unavailable}` : false;
if (SKIP) process.stderr.write(`SKIPPED: ${SKIP}\n`);

let s;
before(async () => {
  if (SKIP) return;
  if (unavailable) throw new Error(`SOCKGATE_REQUIRE_PYTHON=1 but the python-socketio client is unavailable: ${unavailable}`);
  s = await startStack();
});
after(async () => {
  await s?.stop();
});

/** Runs client.py; returns {lines, waitLine(pred), exited}. */
function runClient(args) {
  const child = spawn(PYTHON, [CLIENT, s.url, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l));
    } catch {
      lines.push({ raw: l });
    }
  });
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  exited.then(() => clearTimeout(timer));
  after(() => child.exitCode === null && child.kill('SIGKILL'));
  return {
    lines,
    exited,
    stderr: () => stderr,
    waitLine: (pred, message) =>
      waitFor(() => lines.find(pred), { timeout: 15_000, message: () => `${message}; client said ${JSON.stringify(lines)} ${stderr.slice(-500)}` }).catch(
        (e) => {
          throw new Error(`${message}: ${JSON.stringify(lines)} / stderr: ${stderr.slice(-800)}`, { cause: e });
        },
      ),
  };
}

for (const [name, transports, final, held] of [
  ['long-polling', 'polling', 'polling', 'jar'],
  ['WebSocket', 'websocket', 'websocket', 'jar'],
  ['WebSocket (cookie as a handshake header)', 'websocket', 'websocket', 'header'],
  ['polling upgraded to WebSocket', 'polling,websocket', 'websocket', 'jar'],
]) {
  test(`python-socketio over ${name}: connects with the cookie, a one-argument handler gets the notification`, { skip: SKIP }, async () => {
    const user = `py-${transports.replace(',', '-')}-${held}`;
    const c = runClient([transports, `sid=user-${user}`, held]);
    const ready = await c.waitLine((l) => 'ready' in l || 'refused' in l, 'the client connects');
    assert.deepEqual(ready, { ready: final }, 'connected on the expected transport');
    await waitFor(async () => (await s.publishApi('GET', `/users/${user}`)).json?.sockets === 1, {
      message: 'sockgate sees the socket',
    });
    await publishOk(s.publishSocket, { userId: user, event: 'notification', data: { text: 'hello', n: 1 } });
    const got = await c.waitLine((l) => 'got' in l, 'the notification reaches the one-argument handler');
    assert.deepEqual(got, { got: 'notification', data: { text: 'hello', n: 1 } });
    assert.equal(await c.exited, 0, c.stderr());
    assert.ok(!/TypeError/.test(c.stderr()), `no handler error: ${c.stderr()}`);
  });
}

test('python-socketio without a session cookie is refused', { skip: SKIP }, async () => {
  const c = runClient(['websocket']);
  const line = await c.waitLine((l) => 'refused' in l || 'ready' in l, 'the client reports');
  assert.ok('refused' in line, `refused: ${JSON.stringify(line)}`);
  assert.equal(await c.exited, 0, c.stderr());
});

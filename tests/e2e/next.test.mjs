// Browser end-to-end test of the Next.js example (examples/next): headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) against sockgate in supervisor mode, which
// starts the app itself: `sockgate -- next start` on the production build, and, in the last
// suite, `sockgate -- next dev` on a temporary copy of the app (hot reload through the proxy).
// tests/run.sh installs and builds the example first; this file builds it when `.next/` has no
// build.
//
//   SOCKGATE_BIN       sockgate binary (default: target/debug/sockgate)
//   CHROMIUM_PATH      browser (default: /usr/bin/chromium)
//   SOCKGATE_E2E_VERBOSE=1   stream sockgate's (and the app's) output live
//
// A screenshot of alice's page with notifications goes to tests/e2e/artifacts/next-alice.png.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort, publishOk, waitFor, withTimeout } from '../js/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '..', '..');
const APP_DIR = path.join(REPO_ROOT, 'examples', 'next');
const ARTIFACTS = path.join(here, 'artifacts');
const SOCKGATE_BIN = path.resolve(process.env.SOCKGATE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'sockgate'));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const VERBOSE = !!process.env.SOCKGATE_E2E_VERBOSE;

// playwright-core is a devDependency of the test fixture (tests/fixture/node_modules).
const { chromium } = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'))('playwright-core');

const STEP_TIMEOUT_MS = 10_000;
// `next dev` compiles a page on its first request: on a busy 2-core machine that takes a while.
const DEV_COMPILE_TIMEOUT_MS = 120_000;

/** GET through sockgate → {status, headers}; the body is dropped. Bounded. */
function get(port, p, timeout = 2000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }));
    });
    req.setTimeout(timeout, () => req.destroy(new Error(`GET ${p}: no answer within ${timeout} ms`)));
    req.on('error', reject);
  });
}

/** The pids below `pid` (children, grandchildren…), from /proc. */
function descendants(pid) {
  const parentOf = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // The command name in parentheses may hold spaces: the fields after the last ')'.
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parentOf.set(Number(entry), ppid);
    } catch {} // gone meanwhile
  }
  const found = [];
  let frontier = [pid];
  while (frontier.length) {
    const next = [...parentOf].filter(([, ppid]) => frontier.includes(ppid)).map(([p]) => p);
    found.push(...next);
    frontier = next;
  }
  return found;
}

/** Whether `pid` runs (a zombie does not: it has exited and waits to be reaped). */
function running(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

const commandOf = (pid) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
  } catch {
    return '';
  }
};

// ---------------------------------------------------------------------------
// sockgate in supervisor mode, starting the Next.js app
// ---------------------------------------------------------------------------
const gates = new Set();

class Gate {
  /** `app`: the command after `--`, run in `cwd`. */
  constructor({ name, cwd, app, env: extra = {} }) {
    this.name = name;
    this.output = [];
    this.exited = false;
    this.cwd = cwd;
    this.app = app;
    this.extra = extra;
    gates.add(this);
  }

  async start(timeout = 60_000) {
    this.port = await freePort();
    this.upstreamPort = await freePort();
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-next-'));
    this.socketPath = path.join(this.tmp, 'publish.sock');
    this.baseURL = `http://127.0.0.1:${this.port}`;
    const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1', RUST_LOG: process.env.RUST_LOG || 'info', ...this.extra };
    for (const k of Object.keys(env)) if (k.startsWith('SIDECAR_') && !(k in this.extra)) delete env[k];
    delete env.PORT;
    delete env.HOST;
    delete env.NODE_ENV; // `next dev` and `next start` pick their own
    const args = ['--host', '127.0.0.1', '--port', String(this.port), '--upstream', `http://127.0.0.1:${this.upstreamPort}`,
      '--publish-socket', this.socketPath, '--', ...this.app];
    // Own process group, so the teardown can also kill the app if sockgate is SIGKILLed.
    this.child = spawn(SOCKGATE_BIN, args, { cwd: this.cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.pid = this.child.pid;
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = true;
        this.output.push(`[${this.name}] exited code=${code} signal=${signal}\n`);
        resolve({ code, signal });
      });
    });
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.setEncoding('utf8');
      s.on('data', (d) => {
        this.output.push(d);
        if (VERBOSE) process.stderr.write(`[${this.name}] ${d}`);
      });
    }
    // Up when the app answers through sockgate: /login renders without a session.
    await waitFor(async () => this.exited || (await get(this.port, '/login', 5000).catch(() => ({}))).status === 200, {
      timeout,
      interval: 200,
      message: `${this.name} serving /login`,
    });
    if (this.exited) throw new Error(`${this.name} exited before it was ready\n${this.text()}`);
  }

  text() {
    return this.output.join('');
  }

  /** SIGTERM to sockgate only: it drains, then stops the app's process group. */
  terminate(timeout = 20_000) {
    if (!this.exited) this.child.kill('SIGTERM');
    return withTimeout(this.exit, timeout, `${this.name} to exit after SIGTERM`);
  }

  async tearDown() {
    if (this.child && !this.exited) await this.terminate(5000).catch(() => {});
    try {
      if (this.pid) process.kill(-this.pid, 'SIGKILL');
    } catch {}
    if (this.tmp) fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

process.on('exit', () => {
  for (const g of gates) {
    try {
      if (g.pid) process.kill(-g.pid, 'SIGKILL');
    } catch {}
  }
});

function dumpOutput(gate, title) {
  const t = gate?.text() ?? '';
  process.stderr.write(`\n===== failed: ${title} =====\n${t.length > 20_000 ? `...${t.slice(-20_000)}` : t || '(no output)'}\n`);
}

async function openBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

async function newContext(browser) {
  const ctx = await browser.newContext({ viewport: { width: 900, height: 700 } });
  ctx.setDefaultTimeout(STEP_TIMEOUT_MS);
  return ctx;
}

/** Marks the page's window: the mark survives client-side navigation, not a reload. */
const markWindow = (page) => page.evaluate(() => {
  window.__sameDocument = true;
});
const sameDocument = (page) => page.evaluate(() => window.__sameDocument === true);

/** Builds the example if `.next/` holds no production build (tests/run.sh normally has). */
function ensureBuilt() {
  if (fs.existsSync(path.join(APP_DIR, '.next', 'BUILD_ID'))) return;
  const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1' };
  if (!fs.existsSync(path.join(APP_DIR, 'node_modules'))) {
    const ci = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: APP_DIR, env, stdio: 'inherit', timeout: 300_000 });
    assert.equal(ci.status, 0, 'npm ci in examples/next failed');
  }
  const build = spawnSync('npm', ['run', 'build'], { cwd: APP_DIR, env, stdio: 'inherit', timeout: 600_000 });
  assert.equal(build.status, 0, 'npm run build in examples/next failed');
}

function checkPrerequisites() {
  assert.ok(fs.existsSync(SOCKGATE_BIN), `sockgate binary not found at ${SOCKGATE_BIN} (cargo build, or set SOCKGATE_BIN)`);
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (apt-get install -y chromium, or set CHROMIUM_PATH)`);
}

// ---------------------------------------------------------------------------
// The production build: `sockgate -- next start`
// ---------------------------------------------------------------------------
describe('Next.js example (next start) behind sockgate', { timeout: 240_000 }, () => {
  let gate, browser, aliceCtx, bobCtx, alice, bob;

  before(async () => {
    checkPrerequisites();
    ensureBuilt();
    gate = new Gate({
      name: 'sockgate+next-start',
      cwd: APP_DIR,
      app: ['./node_modules/.bin/next', 'start', '--hostname', '127.0.0.1'],
      // A closed tab leaves the presence room after this grace (5 s by default).
      env: { SIDECAR_CHANNELS__PRESENCE_GRACE_MS: '300' },
    });
    await gate.start();
    browser = await openBrowser();
    aliceCtx = await newContext(browser);
    bobCtx = await newContext(browser);
  });

  afterEach((t) => {
    if (t.passed === false) dumpOutput(gate, t.name);
  });

  after(async () => {
    if (browser) await withTimeout(browser.close(), 10_000, 'browser.close()').catch(() => {});
    await gate?.tearDown();
  });

  test('pages render through the proxy: / without a session redirects to /login', async () => {
    const res = await get(gate.port, '/');
    assert.equal(res.status, 307);
    assert.equal(res.headers.location, '/login');
    const session = await get(gate.port, '/api/session');
    assert.equal(session.status, 401, 'the session route refuses a request without the cookie');
  });

  async function login(ctx, user) {
    const page = await ctx.newPage();
    await page.goto(`${gate.baseURL}/`);
    await page.waitForURL(`${gate.baseURL}/login`);
    // The form's action is a server action: a POST to the page's URL with a Next-Action header.
    const actionP = page.waitForRequest((r) => r.method() === 'POST' && !!r.headers()['next-action']);
    await page.getByTestId(`login-${user}`).click();
    const action = await actionP;
    assert.equal(new URL(action.url()).pathname, '/login');
    await page.waitForURL(`${gate.baseURL}/`);
    await page.getByTestId('current-user').filter({ hasText: user[0].toUpperCase() + user.slice(1) }).waitFor();
    await page.getByTestId('socket-status').filter({ hasText: /^connected$/ }).waitFor();
    return page;
  }

  test('login is a server action through the proxy; the cookie it sets opens the session route (the socket connects)', async () => {
    alice = await login(aliceCtx, 'alice');
    bob = await login(bobCtx, 'bob');
    const [cookie] = (await aliceCtx.cookies()).filter((c) => c.name === 'sid');
    assert.ok(cookie?.httpOnly, 'the session cookie is HttpOnly');
  });

  test('RSC navigation: a <Link> fetches the next page as an RSC payload, no reload', async (t) => {
    if (!alice) return t.skip('needs the logged-in page of the login test');
    await markWindow(alice);
    const rscP = alice.waitForResponse((r) => new URL(r.url()).pathname === '/history' && r.request().headers().rsc === '1');
    await alice.getByTestId('nav-history').click();
    const rsc = await rscP;
    assert.equal(rsc.status(), 200);
    assert.match(rsc.headers()['content-type'] ?? '', /^text\/x-component/);
    await alice.waitForURL(`${gate.baseURL}/history`);
    await alice.getByRole('heading', { name: 'History' }).waitFor();
    assert.ok(await sameDocument(alice), 'the page was not reloaded');
    await alice.getByTestId('nav-home').click();
    await alice.waitForURL(`${gate.baseURL}/`);
    await alice.getByTestId('notify-self').waitFor();
    assert.ok(await sameDocument(alice), 'the page was not reloaded');
  });

  const bellTitles = (page) => page.getByTestId('notification-item').locator('strong').allTextContents();
  const waitForBellItem = (page, title) => page.getByTestId('notification-item').filter({ hasText: title }).first().waitFor();

  test('a server action that publishes: "Notify me" stores the notification and it reaches the bell', async (t) => {
    if (!alice) return t.skip('needs the logged-in page of the login test');
    assert.ok(await alice.getByTestId('bell-count').isHidden(), 'nothing unread yet: no badge');
    await alice.getByTestId('notify-self').click();
    const result = alice.getByTestId('notify-result').filter({ hasText: /^Stored "Hello #1 for alice"; live recipients: \d+$/ });
    await result.waitFor();
    assert.ok(Number((await result.textContent()).split(': ').pop()) >= 1, "alice's socket was among the recipients");
    await waitForBellItem(alice, 'Hello #1 for alice');
    assert.equal(await alice.getByTestId('bell-count').textContent(), '1');
    // What it stored is on the History page (rendered on the server, reached by RSC navigation).
    await alice.getByTestId('nav-history').click();
    await alice.getByTestId('history-item').filter({ hasText: 'Hello #1 for alice' }).waitFor();
  });

  test('a publish on the socket reaches the bell across RSC navigation, and only its user', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the login test');
    // alice is on /history now: the layout (and its socket) stayed while the page changed.
    assert.equal(new URL(alice.url()).pathname, '/history');
    await markWindow(alice);
    const toAlice = { id: `e2e-${process.pid}-a`, title: 'Build finished', createdAt: new Date().toISOString() };
    assert.ok((await publishOk(gate.socketPath, { userId: 'alice', event: 'notification', data: toAlice })).recipients >= 1);
    await waitForBellItem(alice, 'Build finished');
    // Per-socket delivery is ordered: once bob's marker is on his page, anything misrouted to
    // him would be too; then a later one for alice arrives without bob's.
    await publishOk(gate.socketPath, { userId: 'bob', event: 'notification', data: { id: 'e2e-b', title: 'Marker for bob' } });
    await waitForBellItem(bob, 'Marker for bob');
    assert.deepEqual(await bellTitles(bob), ['Marker for bob']);
    assert.equal(await bob.getByTestId('bell-count').textContent(), '1');
    await publishOk(gate.socketPath, { userId: 'alice', event: 'notification', data: { id: 'e2e-a2', title: 'Marker for alice' } });
    await waitForBellItem(alice, 'Marker for alice');
    assert.deepEqual(await bellTitles(alice), ['Marker for alice', 'Build finished', 'Hello #1 for alice']);
    assert.ok(await sameDocument(alice), 'no reload');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await alice.screenshot({ path: path.join(ARTIFACTS, 'next-alice.png'), fullPage: true });
    await alice.getByTestId('nav-home').click();
    await alice.getByTestId('notify-self').waitFor();
  });

  test('presence in two browser contexts: alice and bob see each other; a closed tab leaves', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the login test');
    const online = (page) => page.getByTestId('online-user').evaluateAll((els) => els.map((el) => el.dataset.userId));
    for (const page of [alice, bob]) {
      await waitFor(async () => (await online(page)).join() === 'alice,bob', { message: 'alice and bob online' });
    }
    assert.match(await alice.getByTestId('online-user').first().textContent(), /^Alice \(you\)$/);
    await bob.close();
    bob = undefined;
    await waitFor(async () => (await online(alice)).join() === 'alice', { message: 'bob gone from who is online' });
  });

  test('SIGTERM to sockgate stops the app: no next-server process is left', async () => {
    const below = descendants(gate.pid);
    const servers = below.filter((pid) => commandOf(pid).startsWith('next-server'));
    assert.ok(servers.length >= 1, `a next-server runs below sockgate: ${below.map((p) => `${p} ${commandOf(p)}`).join('; ')}`);
    const { code, signal } = await gate.terminate();
    assert.equal(code, 0, `sockgate's exit status after SIGTERM (signal=${signal})`);
    await waitFor(() => below.every((pid) => !running(pid)), { timeout: 5000, message: 'every process below sockgate to be gone' });
    await assert.rejects(get(gate.upstreamPort, '/login', 1000), /ECONNREFUSED/);
  });
});

// ---------------------------------------------------------------------------
// `sockgate -- next dev` on a temporary copy: hot reload through the proxy
// ---------------------------------------------------------------------------
describe('Next.js example (next dev) behind sockgate: HMR', { timeout: 300_000 }, () => {
  let gate, browser, copy;

  before(async () => {
    checkPrerequisites();
    assert.ok(fs.existsSync(path.join(APP_DIR, 'node_modules')), 'examples/next/node_modules is missing (npm ci)');
    // The page edited below belongs to a copy: the repository's files stay as they are.
    copy = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-nextdev-'));
    fs.cpSync(APP_DIR, copy, {
      recursive: true,
      filter: (src) => !['node_modules', '.next', 'next-env.d.ts'].includes(path.basename(src)),
    });
    fs.symlinkSync(path.join(APP_DIR, 'node_modules'), path.join(copy, 'node_modules'), 'dir');
    gate = new Gate({ name: 'sockgate+next-dev', cwd: copy, app: ['./node_modules/.bin/next', 'dev', '--hostname', '127.0.0.1'] });
    await gate.start(DEV_COMPILE_TIMEOUT_MS);
    browser = await openBrowser();
  });

  afterEach((t) => {
    if (t.passed === false) dumpOutput(gate, t.name);
  });

  after(async () => {
    if (browser) await withTimeout(browser.close(), 10_000, 'browser.close()').catch(() => {});
    await gate?.tearDown();
    if (copy) fs.rmSync(copy, { recursive: true, force: true });
  });

  test('an edit to a page reaches the open page over the HMR WebSocket, without a reload', async () => {
    const page = await (await newContext(browser)).newPage();
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(new URL(ws.url()).pathname));
    await page.goto(`${gate.baseURL}/login`);
    await page.getByRole('heading', { name: 'Log in' }).waitFor({ timeout: DEV_COMPILE_TIMEOUT_MS });
    await waitFor(() => sockets.includes('/_next/webpack-hmr'), { timeout: STEP_TIMEOUT_MS, message: 'the HMR WebSocket through sockgate' });
    await markWindow(page);
    const file = path.join(copy, 'app', 'login', 'page.tsx');
    const source = fs.readFileSync(file, 'utf8');
    assert.ok(source.includes('<h1>Log in</h1>'), 'app/login/page.tsx still has the heading this test edits');
    fs.writeFileSync(file, source.replace('<h1>Log in</h1>', '<h1>Log in, edited</h1>'));
    await page.getByRole('heading', { name: 'Log in, edited' }).waitFor({ timeout: DEV_COMPILE_TIMEOUT_MS });
    assert.ok(await sameDocument(page), 'the edit arrived without a reload');
  });

  test('SIGTERM to sockgate stops `next dev` and the server it forks', async () => {
    const below = descendants(gate.pid);
    assert.ok(below.some((pid) => commandOf(pid).startsWith('next-server')), `a next-server runs below sockgate: ${below.map(commandOf).join('; ')}`);
    const { code } = await gate.terminate();
    assert.equal(code, 0, "sockgate's exit status after SIGTERM");
    await waitFor(() => below.every((pid) => !running(pid)), { timeout: 5000, message: 'every process below sockgate to be gone' });
  });
});

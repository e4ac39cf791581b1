// Browser end-to-end test: headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against sockgate in supervisor mode in front of the built Astro example
// (examples/astro). Run with `node --test tests/e2e/` (tests/run.sh builds the example first;
// this file builds it too if dist/server/entry.mjs is missing).
//
//   SOCKGATE_BIN       sockgate binary (default: target/debug/sockgate)
//   CHROMIUM_PATH      browser (default: /usr/bin/chromium)
//   SOCKGATE_E2E_VERBOSE=1   stream sockgate's (and the app's) output live
//
// A screenshot of alice's page with notifications goes to tests/e2e/artifacts/.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { freePort, sleep, withTimeout } from '../js/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '..', '..');
const APP_DIR = path.join(REPO_ROOT, 'examples', 'astro');
const ARTIFACTS = path.join(here, 'artifacts');
const SOCKGATE_BIN = path.resolve(process.env.SOCKGATE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'sockgate'));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const VERBOSE = !!process.env.SOCKGATE_E2E_VERBOSE;

// playwright-core is a devDependency of the test fixture (tests/fixture/node_modules).
const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
const { chromium } = fixtureRequire('playwright-core');

const LATENCY_BUDGET_MS = 1000; // publish → notification in the DOM
const STEP_TIMEOUT_MS = 10_000; // default bound for a single wait
const RECONNECT_TIMEOUT_MS = 25_000; // Socket.IO backoff tops out at 5 s, the hook's at 15 s (+jitter)

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Plain HTTP request (TCP or Unix socket) → {status, headers, body}. Bounded. */
function request({ socketPath, port, method = 'GET', path: p, headers = {}, body, timeout = 3000 }) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const h = { ...headers };
    if (payload !== undefined) {
      h['content-type'] ??= 'application/json';
      h['content-length'] = Buffer.byteLength(payload);
    }
    const req = http.request(
      { socketPath, host: socketPath ? undefined : '127.0.0.1', port, method, path: p, headers: h, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeout, () => req.destroy(new Error(`${method} ${p}: no answer within ${timeout} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

let notificationSeq = 0;
/** A notification shaped like the app's (src/lib/store.ts), for direct publishes. */
function makeNotification(userId, title) {
  return { id: `e2e-${process.pid}-${++notificationSeq}`, userId, title, createdAt: new Date().toISOString() };
}

// ---------------------------------------------------------------------------
// sockgate in supervisor mode (it starts the Astro app itself)
// ---------------------------------------------------------------------------
const procs = new Set();

class Sockgate {
  constructor({ port, upstreamPort, socketPath, name, env: extraEnv = {} }) {
    this.name = name;
    this.port = port;
    this.output = [];
    this.exited = false;
    const args = [
      '--host', '127.0.0.1',
      '--port', String(port),
      '--upstream', `http://127.0.0.1:${upstreamPort}`,
      '--publish-socket', socketPath,
      '--', process.execPath, './dist/server/entry.mjs',
    ];
    const env = { ...process.env, SOCKGATE_SOCKET: socketPath, RUST_LOG: process.env.RUST_LOG || 'info' };
    for (const k of Object.keys(env)) if (k.startsWith('SIDECAR_')) delete env[k];
    delete env.PORT;
    delete env.HOST;
    Object.assign(env, extraEnv);
    // Own process group, so `after` can also kill the app child if sockgate is SIGKILLed.
    this.child = spawn(SOCKGATE_BIN, args, { cwd: APP_DIR, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.pid = this.child.pid;
    this.exit = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = true;
        this.output.push(`[${name}] exited code=${code} signal=${signal}\n`);
        resolve({ code, signal });
      });
      this.child.once('error', (err) => {
        this.exited = true;
        this.output.push(`[${name}] spawn error: ${err.message}\n`);
        resolve({ code: null, signal: null, error: err });
      });
    });
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.setEncoding('utf8');
      s.on('data', (d) => {
        this.output.push(d);
        if (VERBOSE) process.stderr.write(`[${name}] ${d}`);
      });
    }
    procs.add(this);
  }

  text() {
    return this.output.join('');
  }

  /** Polls GET /login through sockgate until 200 (the app is up behind it). */
  async ready(timeout = 30_000) {
    const deadline = Date.now() + timeout;
    let last = 'no attempt';
    while (Date.now() < deadline) {
      if (this.exited) throw new Error(`${this.name} exited before it was ready`);
      try {
        const res = await request({ port: this.port, path: '/login', timeout: 1000 });
        if (res.status === 200) return;
        last = `status ${res.status}`;
      } catch (e) {
        last = e.message;
      }
      await sleep(100);
    }
    throw new Error(`${this.name} not ready within ${timeout} ms (last: ${last})`);
  }

  /** SIGTERM to sockgate only (it drains and stops the app itself); bounded. */
  async terminate(timeout = 20_000) {
    if (!this.exited) this.child.kill('SIGTERM');
    return withTimeout(this.exit, timeout, `${this.name} to exit after SIGTERM`);
  }

  /** SIGKILL to the whole process group (sockgate and the app). */
  killGroup() {
    try {
      process.kill(-this.pid, 'SIGKILL');
    } catch {}
  }
}

function dumpOutputs(title) {
  const parts = [];
  for (const p of procs) {
    const t = p.text();
    parts.push(`----- ${p.name} (pid ${p.pid}) -----\n${t.length > 20_000 ? `...${t.slice(-20_000)}` : t || '(no output)\n'}`);
  }
  if (parts.length) process.stderr.write(`\n===== failed: ${title} =====\n${parts.join('')}\n`);
}

// Last resort if the runner goes away without running `after`.
process.on('exit', () => {
  for (const p of procs) p.killGroup();
});

// ---------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------
/** Headless Chromium with the flags this machine needs, and a context for each of alice and bob. */
async function openBrowser(viewport) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const contexts = [await browser.newContext({ viewport }), await browser.newContext({ viewport })];
  for (const ctx of contexts) ctx.setDefaultTimeout(STEP_TIMEOUT_MS);
  return [browser, ...contexts];
}

/** Closes the browser, stops every process the suite started (gracefully, then the group), removes `tmp`. */
async function tearDown(browser, tmp) {
  try {
    if (browser) await withTimeout(browser.close(), 10_000, 'browser.close()');
  } catch (e) {
    process.stderr.write(`browser.close: ${e.message}\n`);
  }
  for (const p of procs) {
    // Graceful first (lets sockgate stop the app), then the whole group.
    if (!p.exited) await p.terminate(5000).catch(() => {});
    p.killGroup();
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}

const statusOf = (page) => page.getByTestId('socket-status').textContent();

async function expectStatus(page, want, timeout = STEP_TIMEOUT_MS) {
  await page
    .getByTestId('socket-status')
    .filter({ hasText: new RegExp(`^${want}$`) })
    .waitFor({ timeout })
    .catch(async (e) => {
      throw new Error(`socket-status never became "${want}" (is "${await statusOf(page).catch(() => '?')}"): ${e.message}`);
    });
}

const itemTitles = (page) =>
  page.getByTestId('notification-item').locator('strong').allTextContents();

async function waitForItem(page, title, timeout = STEP_TIMEOUT_MS) {
  await page.getByTestId('notification-item').filter({ hasText: title }).first().waitFor({ timeout });
}

/**
 * Records, in the page, the wall-clock time at which each notification title first shows up
 * in the DOM (MutationObserver: runs right after React commits). Same machine, same clock as
 * the test process, so `seenAt - publishedAt` is the end-to-end latency.
 */
async function installArrivalClock(page) {
  await page.evaluate(() => {
    if (window.__seenAt) return;
    window.__seenAt = {};
    const scan = () => {
      const now = Date.now();
      for (const el of document.querySelectorAll('[data-testid="notification-item"] strong')) {
        const t = el.textContent;
        if (!(t in window.__seenAt)) window.__seenAt[t] = now;
      }
    };
    scan();
    new MutationObserver(scan).observe(document.body, { childList: true, subtree: true, characterData: true });
  });
}

async function arrivalTime(page, title, timeout = STEP_TIMEOUT_MS) {
  const handle = await page.waitForFunction((t) => window.__seenAt?.[t], title, { timeout, polling: 20 });
  return handle.jsonValue();
}

async function login(context, baseURL, user) {
  const page = await context.newPage();
  await page.goto(`${baseURL}/login`);
  await Promise.all([
    page.waitForURL(`${baseURL}/`, { timeout: STEP_TIMEOUT_MS }),
    page.getByTestId(`login-${user}`).click(),
  ]);
  assert.equal(await page.getByTestId('current-user').textContent(), user[0].toUpperCase() + user.slice(1));
  return page;
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------
describe('browser end-to-end: Astro example behind sockgate', { timeout: 240_000 }, () => {
  let tmp, socketPath, port, upstreamPort, baseURL;
  let gate; // current Sockgate
  let browser, aliceCtx, bobCtx, alice, bob;
  const latencies = [];

  const publish = (msg) => request({ socketPath, method: 'POST', path: '/publish', body: msg });

  async function startSockgate(name) {
    gate = new Sockgate({ port, upstreamPort, socketPath, name });
    await gate.ready();
    return gate;
  }

  before(async () => {
    assert.ok(fs.existsSync(SOCKGATE_BIN), `sockgate binary not found at ${SOCKGATE_BIN} (cargo build, or set SOCKGATE_BIN)`);
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (apt-get install -y chromium, or set CHROMIUM_PATH)`);
    if (!fs.existsSync(path.join(APP_DIR, 'dist', 'server', 'entry.mjs'))) {
      if (!fs.existsSync(path.join(APP_DIR, 'node_modules'))) {
        // The example installs @sockgate/client and @sockgate/react from their tarballs.
        const pack = spawnSync(path.join(REPO_ROOT, 'clients', 'pack.sh'), { stdio: 'inherit', timeout: 300_000 });
        assert.equal(pack.status, 0, 'clients/pack.sh failed');
        const ci = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: APP_DIR, stdio: 'inherit', timeout: 300_000 });
        assert.equal(ci.status, 0, 'npm ci in examples/astro failed');
      }
      const build = spawnSync('npm', ['run', 'build'], {
        cwd: APP_DIR,
        stdio: 'inherit',
        timeout: 300_000,
        env: { ...process.env, ASTRO_TELEMETRY_DISABLED: '1' },
      });
      assert.equal(build.status, 0, 'npm run build in examples/astro failed');
    }
    fs.mkdirSync(ARTIFACTS, { recursive: true });

    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-e2e-'));
    socketPath = path.join(tmp, 'publish.sock');
    port = await freePort();
    upstreamPort = await freePort();
    baseURL = `http://127.0.0.1:${port}`;
    await startSockgate('sockgate#1');

    [browser, aliceCtx, bobCtx] = await openBrowser({ width: 900, height: 700 });
  });

  afterEach((t) => {
    if (t.passed === false) dumpOutputs(t.name);
  });

  after(async () => {
    await tearDown(browser, tmp);
    if (latencies.length) {
      process.stderr.write(`publish → DOM latencies (ms): ${latencies.map(([k, v]) => `${k}=${v}`).join(', ')}\n`);
    }
  });

  test('alice and bob log in through the form and their sockets connect', async () => {
    alice = await login(aliceCtx, baseURL, 'alice');
    await expectStatus(alice, 'connected');
    bob = await login(bobCtx, baseURL, 'bob');
    await expectStatus(bob, 'connected');
    await installArrivalClock(alice);
    await installArrivalClock(bob);
  });

  test('the bell: an inline 20×20 icon, no badge at 0, "Mark all read" beside the heading in normal weight', async (t) => {
    if (!alice) return t.skip('needs the logged-in pages of the first test');
    // Nothing was published yet: alice has no notification.
    assert.equal(await alice.getByTestId('notification-item').count(), 0);
    const facts = await alice.evaluate(() => {
      const box = (el) => {
        const r = el.getBoundingClientRect();
        return { width: r.width, height: r.height, top: r.top, bottom: r.bottom };
      };
      const heading = document.querySelector('.bell h2');
      const icon = document.querySelector('[data-testid="bell-icon"]');
      const badge = document.querySelector('[data-testid="bell-count"]');
      const button = document.querySelector('[data-testid="mark-all-read"]');
      return {
        headingText: heading.innerText.trim(), // what is rendered, hidden parts left out
        iconTag: icon.tagName.toLowerCase(),
        iconPaths: icon.querySelectorAll('path').length,
        icon: box(icon),
        heading: box(heading),
        badgeShown: badge.checkVisibility(),
        badgeBox: box(badge),
        buttonInHeading: heading.contains(button),
        button: box(button),
        buttonWeight: Number(getComputedStyle(button).fontWeight),
        buttonSize: parseFloat(getComputedStyle(button).fontSize),
        bodySize: parseFloat(getComputedStyle(document.body).fontSize),
      };
    });
    await alice.locator('section.bell').screenshot({ path: path.join(ARTIFACTS, 'alice-bell-empty.png') });
    // An inline SVG, not a character: an emoji renders as an empty box without an emoji font.
    assert.equal(facts.iconTag, 'svg');
    assert.ok(facts.iconPaths > 0, 'the icon draws something');
    assert.deepEqual([facts.icon.width, facts.icon.height], [20, 20], `icon box ${JSON.stringify(facts.icon)}`);
    assert.ok(facts.icon.top >= facts.heading.top && facts.icon.bottom <= facts.heading.bottom, 'the icon sits in the heading line');
    assert.equal(facts.headingText, 'Notifications', 'no "0" and no button text in the heading');
    assert.equal(facts.badgeShown, false, 'no badge when nothing is unread');
    assert.deepEqual([facts.badgeBox.width, facts.badgeBox.height], [0, 0], 'the hidden badge takes no room');
    assert.equal(facts.buttonInHeading, false, '"Mark all read" is not part of the heading');
    assert.ok(facts.buttonWeight <= 400, `"Mark all read" in normal weight (font-weight ${facts.buttonWeight})`);
    assert.ok(facts.buttonSize <= facts.bodySize, `"Mark all read" no larger than the text (${facts.buttonSize}px)`);
    assert.ok(facts.button.height < facts.heading.height * 1.5, `button ${facts.button.height}px tall, heading ${facts.heading.height}px`);
  });

  test('a notification reaches alice (via the app and directly) within 1 s, never bob', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the first test');
    // (a) through the app: "Notify me" → POST /api/notifications → pushNotification → sockgate.
    const before = new Set(await itemTitles(alice));
    const responseP = alice.waitForResponse((r) => r.url() === `${baseURL}/api/notifications` && r.request().method() === 'POST');
    const t0 = Date.now();
    await alice.getByTestId('notify-self').click();
    const res = await responseP;
    assert.equal(res.status(), 201);
    const { notification, recipients } = await res.json();
    assert.equal(notification.userId, 'alice');
    assert.ok(!before.has(notification.title));
    assert.ok(recipients >= 1, `the app's pushNotification should reach alice's socket (recipients=${recipients})`);
    const viaApp = (await arrivalTime(alice, notification.title)) - t0;
    latencies.push(['click→DOM (via app)', viaApp]);
    assert.ok(viaApp < LATENCY_BUDGET_MS, `via the app: ${viaApp} ms from click to DOM`);

    // (b) directly on the publish socket.
    const direct = makeNotification('alice', 'Direct publish for alice');
    const t1 = Date.now();
    const pub = await publish({ userId: 'alice', event: 'notification', data: direct });
    assert.equal(pub.status, 200, pub.body);
    assert.ok(JSON.parse(pub.body).recipients >= 1, pub.body);
    const viaSocket = (await arrivalTime(alice, direct.title)) - t1;
    latencies.push(['publish→DOM (unix socket)', viaSocket]);
    assert.ok(viaSocket < LATENCY_BUDGET_MS, `direct publish: ${viaSocket} ms to DOM`);

    // Bob: publish a marker for him *after* alice's two were delivered. Per-socket delivery is
    // ordered, so once the marker is on bob's page, anything misrouted to him would be too.
    const bobMarker = makeNotification('bob', 'Marker for bob');
    const t2 = Date.now();
    await publish({ userId: 'bob', event: 'notification', data: bobMarker });
    latencies.push(['publish→DOM (bob)', (await arrivalTime(bob, bobMarker.title)) - t2]);
    const bobTitles = await itemTitles(bob);
    assert.deepEqual(bobTitles, [bobMarker.title], `bob sees only his own notification, got ${JSON.stringify(bobTitles)}`);

    // And the reverse: a later alice marker arrives, bob's marker never did.
    const aliceMarker = makeNotification('alice', 'Marker for alice');
    await publish({ userId: 'alice', event: 'notification', data: aliceMarker });
    await waitForItem(alice, aliceMarker.title);
    const aliceTitles = await itemTitles(alice);
    assert.ok(!aliceTitles.includes(bobMarker.title), `alice got bob's marker: ${JSON.stringify(aliceTitles)}`);
    assert.deepEqual(aliceTitles.slice(0, 3), [aliceMarker.title, direct.title, notification.title]);
    assert.equal(await alice.getByTestId('bell-count').textContent(), String(aliceTitles.length));
    assert.ok(await alice.getByTestId('bell-count').isVisible(), 'the badge shows while something is unread');

    await alice.screenshot({ path: path.join(ARTIFACTS, 'alice-notifications.png'), fullPage: true });

    // Everything read: the badge goes (rather than showing a red "0").
    await alice.getByTestId('mark-all-read').click();
    await alice.getByTestId('bell-count').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT_MS });
    assert.equal(await alice.getByTestId('mark-all-read').isDisabled(), true);
  });

  test("the README's payload renders: no id, no date, sent twice → two items with a real date", async (t) => {
    if (!alice) return t.skip('needs the logged-in pages of the first test');
    const page = await aliceCtx.newPage();
    const failed = [];
    const consoleErrors = [];
    page.on('response', (r) => r.status() >= 400 && failed.push(`${r.status()} ${r.url()}`));
    page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
    await page.goto(`${baseURL}/`);
    await expectStatus(page, 'connected');
    // Exactly the Quick start's pushNotification payload, twice: the second has no id either.
    for (let i = 0; i < 2; i++) {
      const pub = await publish({ userId: 'alice', data: { title: 'Build finished' } });
      assert.equal(pub.status, 200, pub.body);
    }
    await page.waitForFunction(
      () => [...document.querySelectorAll('[data-testid="notification-item"] strong')]
        .filter((el) => el.textContent === 'Build finished').length === 2,
      null,
      { timeout: STEP_TIMEOUT_MS },
    );
    const dates = await page.getByTestId('notification-item').locator('time').allTextContents();
    assert.ok(dates.every((d) => d && !/Invalid Date/.test(d)), `dates: ${JSON.stringify(dates)}`);
    // A payload that is not an object still shows up.
    await publish({ userId: 'alice', data: 'plain text' });
    await waitForItem(page, 'plain text');
    await sleep(200); // a favicon request goes out after load
    assert.deepEqual(failed, [], 'no failed requests (favicon included)');
    assert.deepEqual(consoleErrors, [], 'no console errors');
    await page.close();
  });

  test('sockgate restart: the page reconnects by itself and refetches what it missed', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the first test');
    // The Astro app keeps sessions in memory and supervisor mode restarts it with sockgate, so
    // every session dies with the restart. To keep this deterministic, alice's socket.io
    // requests are refused (as if sockgate were still down) until she has logged in again and
    // a notification was stored while she was offline; then the hook's own reconnect must
    // bring her back and its onReconnect refetch must show the missed notification.
    const isSocketIo = (url) => new URL(url).pathname.startsWith('/socket.io/');
    await alice.route(isSocketIo, (route) => route.abort('connectionrefused'));

    const old = gate;
    const t0 = Date.now();
    const { code, signal } = await old.terminate();
    assert.equal(code, 0, `sockgate exit code after SIGTERM (signal=${signal})\n${old.text()}`);
    const stopMs = Date.now() - t0;
    // Supervisor mode stopped the app with it: nothing listens on the upstream port.
    await assert.rejects(request({ port: upstreamPort, path: '/login', timeout: 1000 }), /ECONNREFUSED/);
    // Both pages notice: the transport was closed.
    await alice.getByTestId('socket-status').filter({ hasNotText: /^connected$/ }).waitFor({ timeout: STEP_TIMEOUT_MS });
    await bob.getByTestId('socket-status').filter({ hasNotText: /^connected$/ }).waitFor({ timeout: STEP_TIMEOUT_MS });

    const t1 = Date.now();
    await startSockgate('sockgate#2'); // same public port, same publish socket path
    const startMs = Date.now() - t1;
    latencies.push(['sigterm→exit', stopMs], ['restart→ready', startMs]);

    // Log alice in again (JSON login: the cookie lands in her browser context's jar).
    const relogin = await aliceCtx.request.post(`${baseURL}/api/login`, { data: { userId: 'alice' } });
    assert.equal(relogin.status(), 200, await relogin.text());

    // Stored while alice is offline: nobody receives it live.
    const missed = await aliceCtx.request.post(`${baseURL}/api/notifications`, { data: { title: 'Missed while reconnecting' } });
    assert.equal(missed.status(), 201, await missed.text());
    const missedBody = await missed.json();
    assert.equal(missedBody.recipients, 0, 'nobody is connected yet, so no live delivery');

    const refetchP = alice.waitForRequest(
      (r) => r.url() === `${baseURL}/api/notifications` && r.method() === 'GET',
      { timeout: RECONNECT_TIMEOUT_MS },
    );
    const t2 = Date.now();
    await alice.unroute(isSocketIo);
    await refetchP; // onReconnect ran
    await expectStatus(alice, 'connected', RECONNECT_TIMEOUT_MS);
    latencies.push(['unblock→connected', Date.now() - t2]);
    await waitForItem(alice, missedBody.notification.title);
    // The refetch replaced the list with the (restarted) app's store.
    assert.deepEqual(await itemTitles(alice), [missedBody.notification.title]);

    // Live delivery works on the new instance.
    const live = makeNotification('alice', 'Live after restart');
    const t3 = Date.now();
    await publish({ userId: 'alice', event: 'notification', data: live });
    const afterRestart = (await arrivalTime(alice, live.title)) - t3;
    latencies.push(['publish→DOM (after restart)', afterRestart]);
    assert.ok(afterRestart < LATENCY_BUDGET_MS, `${afterRestart} ms`);

    // Bob did not log in again: his old session died with the app, so his page ends up
    // "unauthorized" and stops retrying.
    await expectStatus(bob, 'unauthorized', RECONNECT_TIMEOUT_MS);
    // And no handshake after that: longer than both backoffs' first steps (Socket.IO's 1 s
    // ±50%, the client's 0.5–1 s), nothing asks sockgate (nor the session route) again.
    const retries = [];
    const onRequest = (r) => new URL(r.url()).pathname.startsWith('/socket.io/') && retries.push(r.url());
    bob.on('request', onRequest);
    await sleep(2000);
    bob.off('request', onRequest);
    assert.deepEqual(retries, [], "after 'unauthorized' nothing retries");
  });

  test('?transport=polling: connects and stays on long-polling, publishes arrive', async () => {
    const page = await aliceCtx.newPage();
    const urls = [];
    const websockets = [];
    page.on('request', (r) => {
      if (new URL(r.url()).pathname.startsWith('/socket.io/')) urls.push(r.url());
    });
    page.on('websocket', (ws) => websockets.push(ws.url()));
    await page.goto(`${baseURL}/?transport=polling`);
    await expectStatus(page, 'connected');
    await installArrivalClock(page);

    const n = makeNotification('alice', 'Polling delivery');
    const t0 = Date.now();
    await publish({ userId: 'alice', event: 'notification', data: n });
    const ms = (await arrivalTime(page, n.title)) - t0;
    latencies.push(['publish→DOM (polling)', ms]);
    assert.ok(ms < LATENCY_BUDGET_MS, `${ms} ms`);

    // Give an upgrade attempt time to happen (it would start right after the handshake).
    await sleep(500);
    assert.equal(await statusOf(page), 'connected');
    const polling = urls.filter((u) => new URL(u).searchParams.get('transport') === 'polling');
    const ws = urls.filter((u) => new URL(u).searchParams.get('transport') === 'websocket');
    assert.ok(polling.length >= 2, `expected long-polling requests, saw ${JSON.stringify(urls)}`);
    assert.deepEqual(ws, [], 'no websocket transport requests');
    assert.deepEqual(websockets, [], 'no WebSocket opened');
    await page.close();
  });

  test('a visitor without a session gets no socket and no notifications', async () => {
    const ctx = await browser.newContext();
    try {
      const page = await ctx.newPage();
      const socketRequests = [];
      page.on('request', (r) => {
        if (new URL(r.url()).pathname.startsWith('/socket.io/')) socketRequests.push(r.url());
      });
      await page.goto(`${baseURL}/`);
      await page.waitForURL(`${baseURL}/login`);
      await publish({ userId: 'alice', event: 'notification', data: makeNotification('alice', 'Not for visitors') });
      await sleep(300);
      assert.deepEqual(socketRequests, [], 'the login page opens no socket');
      assert.equal(await page.getByTestId('notification-item').count(), 0);

      // Even a hand-made Socket.IO handshake from this (cookieless) page is refused: without
      // credentials it gets 401 before any session exists.
      const answer = await withTimeout(page.evaluate(async () => {
        const r = await fetch('/socket.io/?EIO=4&transport=polling');
        return { status: r.status, text: await r.text() };
      }), STEP_TIMEOUT_MS, 'a hand-made Socket.IO handshake to be answered');
      assert.equal(answer.status, 401, `cookieless handshake: ${JSON.stringify(answer)}`);
      assert.match(answer.text, /no credentials/);
    } finally {
      await ctx.close();
    }
  });
});

// ---------------------------------------------------------------------------
// Channels and presence: the Team panel (useChannel('team:demo')) and the "Who is online"
// list (usePresence('presence:team-demo')) of the example, on a fresh sockgate whose presence
// grace is short.
// ---------------------------------------------------------------------------
const PRESENCE_GRACE_MS = 1500;

const onlineIds = (page) =>
  page.getByTestId('online-user').evaluateAll((els) => els.map((el) => el.dataset.userId));

async function expectOnline(page, want, timeout = STEP_TIMEOUT_MS) {
  const wanted = [...want].sort();
  await page
    .waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('[data-testid="online-user"]')]
        .map((el) => el.dataset.userId).sort()) === JSON.stringify(w),
      wanted,
      { timeout, polling: 20 },
    )
    .catch(async (e) => {
      throw new Error(`who-is-online never became ${JSON.stringify(wanted)} (is ${JSON.stringify(await onlineIds(page).catch(() => '?'))}): ${e.message}`);
    });
}

async function expectTeamMessage(page, text, timeout = STEP_TIMEOUT_MS) {
  await page.getByTestId('team-message-text').filter({ hasText: new RegExp(`^${text}$`) }).first().waitFor({ timeout });
}

/** Counts the page's Socket.IO connections: handshakes (no sid yet) and WebSockets opened. */
function countConnections(page) {
  const seen = { handshakes: 0, websockets: 0 };
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/socket.io/') && !u.searchParams.has('sid')) seen.handshakes++;
  });
  page.on('websocket', (ws) => {
    if (new URL(ws.url()).pathname.startsWith('/socket.io/')) seen.websockets++;
  });
  return seen;
}

describe('browser end-to-end: channels and presence', { timeout: 240_000 }, () => {
  let tmp, socketPath, port, upstreamPort, baseURL;
  let browser, aliceCtx, bobCtx, alice, bob;
  const aliceConnections = [];

  const publish = (msg) => request({ socketPath, method: 'POST', path: '/publish', body: msg });
  const api = (method, p) => request({ socketPath, method, path: p }).then((r) => ({ status: r.status, body: JSON.parse(r.body) }));

  async function loginCounting(context, user) {
    const page = await context.newPage();
    const seen = countConnections(page);
    await page.goto(`${baseURL}/login`);
    await Promise.all([
      page.waitForURL(`${baseURL}/`, { timeout: STEP_TIMEOUT_MS }),
      page.getByTestId(`login-${user}`).click(),
    ]);
    return { page, seen };
  }

  before(async () => {
    assert.ok(fs.existsSync(SOCKGATE_BIN), `sockgate binary not found at ${SOCKGATE_BIN} (cargo build, or set SOCKGATE_BIN)`);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-e2e-'));
    socketPath = path.join(tmp, 'publish.sock');
    port = await freePort();
    upstreamPort = await freePort();
    baseURL = `http://127.0.0.1:${port}`;
    const gate = new Sockgate({
      port, upstreamPort, socketPath, name: 'sockgate#channels',
      env: { SIDECAR_CHANNELS__PRESENCE_GRACE_MS: String(PRESENCE_GRACE_MS) },
    });
    await gate.ready().catch((e) => {
      dumpOutputs('starting sockgate with channels');
      throw e;
    });
    [browser, aliceCtx, bobCtx] = await openBrowser({ width: 900, height: 900 });
  });

  afterEach((t) => {
    if (t.passed === false) dumpOutputs(t.name);
  });

  after(async () => {
    await tearDown(browser, tmp);
  });

  test('alice and bob appear in each other\'s who-is-online list, over one connection per page', async () => {
    const a = await loginCounting(aliceCtx, 'alice');
    alice = a.page;
    aliceConnections.push(a.seen);
    await expectStatus(alice, 'connected');
    await expectOnline(alice, ['alice']);
    const b = await loginCounting(bobCtx, 'bob');
    bob = b.page;
    await expectStatus(bob, 'connected');
    await expectOnline(bob, ['alice', 'bob']);
    await expectOnline(alice, ['alice', 'bob']); // presence:join reached alice
    // The session route's `user` is what the list shows.
    assert.deepEqual(await alice.getByTestId('online-user').allTextContents(), ['Alice (you)', 'Bob']);
    for (const page of [alice, bob]) {
      await page.getByTestId('team-status').filter({ hasText: /^subscribed$/ }).waitFor();
    }
    // The bell, the team panel and the presence list share one Socket.IO connection.
    await sleep(300);
    for (const [who, seen] of [['alice', a.seen], ['bob', b.seen]]) {
      assert.equal(seen.handshakes, 1, `${who}: Socket.IO handshakes ${JSON.stringify(seen)}`);
      assert.ok(seen.websockets <= 1, `${who}: WebSockets ${JSON.stringify(seen)}`);
    }
    const room = await api('GET', '/rooms/presence%3Ateam-demo');
    assert.equal(room.status, 200, JSON.stringify(room.body));
    assert.deepEqual(
      [...room.body.members].sort((x, y) => x.id.localeCompare(y.id)),
      [{ id: 'alice', info: { name: 'Alice' } }, { id: 'bob', info: { name: 'Bob' } }],
    );
  });

  test('a team publish reaches both (from the page, through the app, and on the publish socket)', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the first test');
    // From alice's page: "Send to team" → POST /api/team → publish to room team:demo.
    await alice.getByTestId('team-input').fill('Standup in 5');
    const responseP = alice.waitForResponse((r) => r.url() === `${baseURL}/api/team`);
    await alice.getByTestId('team-send').click();
    const res = await responseP;
    assert.equal(res.status(), 201);
    assert.ok((await res.json()).recipients >= 2, 'both sockets are in team:demo');
    for (const page of [alice, bob]) await expectTeamMessage(page, 'Standup in 5');

    // Straight to the publish socket, like demo.sh's curl line.
    const pub = await publish({ room: 'team:demo', event: 'message', data: { from: 'curl', text: 'Hello team' } });
    assert.equal(pub.status, 200, pub.body);
    assert.equal(JSON.parse(pub.body).recipients, 2, pub.body);
    for (const page of [alice, bob]) await expectTeamMessage(page, 'Hello team');
    // A team message is not a notification.
    assert.equal(await alice.getByTestId('notification-item').count(), 0);
    await alice.screenshot({ path: path.join(ARTIFACTS, 'alice-team.png'), fullPage: true });
  });

  test('a room the authorize route forbids shows the error; the team channel is unaffected', async (t) => {
    if (!alice) return t.skip('needs the logged-in pages of the first test');
    await alice.getByTestId('other-room-input').fill('team:secret');
    await alice.getByTestId('other-room-join').click();
    await alice.getByTestId('other-room-status').filter({ hasText: /^team:secret: forbidden$/ }).waitFor();
    await alice.getByTestId('other-room-input').fill('user:bob');
    await alice.getByTestId('other-room-join').click();
    await alice.getByTestId('other-room-status').filter({ hasText: /^user:bob: invalid room$/ }).waitFor();
    assert.equal(await alice.getByTestId('team-status').textContent(), 'subscribed');
    const status = await api('GET', '/users/alice');
    assert.ok(!status.body.rooms.includes('team:secret'), JSON.stringify(status.body));
  });

  test('a second tab changes nothing; closing the last one removes the user after the grace', async (t) => {
    if (!alice || !bob) return t.skip('needs the logged-in pages of the first test');
    const bob2 = await bobCtx.newPage();
    await bob2.goto(`${baseURL}/`);
    await expectStatus(bob2, 'connected');
    await expectOnline(bob2, ['alice', 'bob']);
    await bob2.close();
    await sleep(PRESENCE_GRACE_MS + 700);
    await expectOnline(alice, ['alice', 'bob'], 100); // bob still has a tab open

    const t0 = Date.now();
    await bob.close();
    bob = null;
    await sleep(Math.min(500, PRESENCE_GRACE_MS / 3));
    assert.deepEqual((await onlineIds(alice)).sort(), ['alice', 'bob'], 'bob is kept during the grace');
    await expectOnline(alice, ['alice'], PRESENCE_GRACE_MS + STEP_TIMEOUT_MS);
    const gone = Date.now() - t0;
    assert.ok(gone >= PRESENCE_GRACE_MS - 100, `bob left after ${gone} ms, before the ${PRESENCE_GRACE_MS} ms grace`);
  });

  test('after a reconnect the list is fetched again: a leave missed while away is applied', async (t) => {
    if (!alice) return t.skip('needs the logged-in page of the first test');
    bob = await bobCtx.newPage();
    await bob.goto(`${baseURL}/`);
    await expectOnline(alice, ['alice', 'bob']);

    // Cut alice off: her socket is closed by sockgate and her reconnects fail for now.
    const isSocketIo = (url) => new URL(url).pathname.startsWith('/socket.io/');
    await alice.route(isSocketIo, (route) => route.abort('connectionrefused'));
    const kicked = await api('POST', '/users/alice/disconnect');
    assert.equal(kicked.body.disconnected, 1, JSON.stringify(kicked.body));
    await alice.getByTestId('team-status').filter({ hasText: /^disconnected$/ }).waitFor();

    // Bob leaves while alice is away: she cannot get the presence:leave.
    await bob.close();
    bob = null;
    const deadline = Date.now() + PRESENCE_GRACE_MS + STEP_TIMEOUT_MS;
    for (;;) {
      const room = await api('GET', '/rooms/presence%3Ateam-demo');
      if (!(room.body.members ?? []).some((m) => m.id === 'bob')) break;
      assert.ok(Date.now() < deadline, `bob never left: ${JSON.stringify(room.body)}`);
      await sleep(100);
    }
    assert.deepEqual((await onlineIds(alice)).sort(), ['alice', 'bob'], 'alice\'s list is stale while she is away');

    await alice.unroute(isSocketIo);
    await expectStatus(alice, 'connected', RECONNECT_TIMEOUT_MS);
    await alice.getByTestId('team-status').filter({ hasText: /^subscribed$/ }).waitFor({ timeout: RECONNECT_TIMEOUT_MS });
    await expectOnline(alice, ['alice']);
    // And the team channel works on the new socket.
    await publish({ room: 'team:demo', event: 'message', data: { from: 'curl', text: 'After reconnect' } });
    await expectTeamMessage(alice, 'After reconnect');
    // Still one connection on alice's page at a time: the reconnects reused the same socket.
    assert.ok(aliceConnections[0].handshakes >= 2, JSON.stringify(aliceConnections[0]));
  });

  test('a reload resumes where the page was: a team message published while away is replayed', async (t) => {
    if (!alice) return t.skip('needs the logged-in page of the first test');
    // The example keeps offsets in sessionStorage (createSockgate({ persistOffsets: true })).
    await publish({ room: 'team:demo', event: 'message', data: { from: 'curl', text: 'Before leaving' } });
    await expectTeamMessage(alice, 'Before leaving');
    const stored = JSON.parse((await alice.evaluate(() => sessionStorage.getItem('sockgate:offsets'))) ?? '{}');
    assert.ok(stored['team:demo'], `team:demo's offset is stored: ${JSON.stringify(stored)}`);

    // Away (same tab, another page), then back: what was published meanwhile comes first.
    await alice.goto('about:blank');
    // The page's socket closes as it unloads, which goto() does not wait for: away means
    // sockgate saw it go (once seen to fail under load: the publish came first).
    for (const deadline = Date.now() + 5000; (await api('GET', '/users/alice')).body.online;) {
      assert.ok(Date.now() < deadline, 'alice\'s socket is still open 5 s after she left the page');
      await sleep(50);
    }
    const away = await publish({ room: 'team:demo', event: 'message', data: { from: 'curl', text: 'While away' } });
    assert.equal(JSON.parse(away.body).recipients, 0, 'nobody was there to get it live');
    await alice.goto(`${baseURL}/`);
    await expectStatus(alice, 'connected');
    await expectTeamMessage(alice, 'While away');
    await sleep(300);
    const texts = await alice.getByTestId('team-message-text').allTextContents();
    assert.deepEqual(texts, ['While away'], 'replayed once, and nothing from before the offset');
  });
});

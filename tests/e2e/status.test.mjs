// The status page on the admin listener, in headless Chromium (playwright-core): it renders,
// its figures are /stats's, the chart has samples, and the screenshot is not empty. The
// publish socket answers the same page.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

import { REPO_ROOT, closeAll, connect, freePort, publishApi, startStack, waitFor } from '../js/harness.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const { chromium } = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'))('playwright-core');

test('GET / on the admin listener: a live status page whose figures match /stats', {
  skip: fs.existsSync(CHROMIUM) ? false : `${CHROMIUM} not found (apt-get install chromium)`,
  timeout: 60_000,
}, async () => {
  const adminPort = await freePort();
  const stack = await startStack({ env: { SIDECAR_ADMIN__LISTEN: `127.0.0.1:${adminPort}` } });
  const sockets = [];
  let browser;
  after(async () => {
    closeAll(sockets);
    await browser?.close().catch(() => {});
    await stack.stop().catch(() => {});
  });
  sockets.push(await connect(stack.url, { cookie: 'sid=alice-token' }));
  sockets.push(await connect(stack.url, { cookie: 'sid=bob-token' }));
  await stack.publish({ userId: 'alice', data: { title: 'status page' } });

  const onSocket = await publishApi(stack.publishSocket, 'GET', '/');
  assert.equal(onSocket.status, 200);
  assert.match(onSocket.headers['content-type'], /^text\/html/);
  assert.doesNotMatch(onSocket.text, /(src|href)="https?:/, 'no external assets');

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  const failed = [];
  page.on('requestfailed', (r) => failed.push(r.url()));
  page.on('response', (r) => r.status() >= 400 && failed.push(`${r.status()} ${r.url()}`));
  await page.goto(`http://127.0.0.1:${adminPort}/`);
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });

  const stats = (await publishApi(stack.publishSocket, 'GET', '/stats')).json;
  await waitFor(async () => (await page.textContent('#connections')) === String(stats.connections), {
    timeout: 5000,
    message: 'the page to show /stats connections',
  });
  for (const key of ['connections', 'users', 'rooms', 'publishes', 'deliveries']) {
    assert.equal(await page.textContent(`#${key}`), String(stats[key]), key);
  }
  assert.equal(stats.connections, 2);
  assert.equal(stats.publishes, 1);
  // The sampler's first sample is taken at start; the chart is drawn from the samples.
  assert.notEqual(await page.getAttribute('#line-sockets', 'points'), '');
  const shot = await page.screenshot({ fullPage: true });
  assert.ok(shot.length > 5000, `screenshot is ${shot.length} bytes`);
  assert.deepEqual(failed, [], 'no failed requests');
});

// The Grafana dashboard (deploy/grafana/dashboards/sockgate.json) queries only metrics that a
// live sockgate exposes: a cluster-mode instance (real redis-server) is scraped and every
// `sockgate_*` name in the panels' expressions must be among the exposed series.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { REPO_ROOT, closeAll, connect, connectError, freePort, publishApi, startStack, waitFor } from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';

const SKIP = findRedisServer() ? false : 'redis-server is not on PATH';

/** Names a scrape can be queried by: counters as `_total`, histograms as `_bucket/_sum/_count`. */
function exposedNames(text) {
  const names = new Set();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (type === 'counter') names.add(`${name}_total`);
    else if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    else names.add(name);
  }
  return names;
}

test('every metric the Grafana dashboard queries is in a cluster-mode /metrics', { skip: SKIP }, async () => {
  const redis = await startRedis(await freePort());
  const stack = await startStack({
    env: { SIDECAR_CLUSTER__REDIS_URL: redis.url, SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' },
  });
  after(async () => {
    await stack.stop().catch(() => {});
    await redis.kill('SIGKILL').catch(() => {});
  });
  await waitFor(async () => (await publishApi(stack.publishSocket, 'GET', '/readyz')).status === 200, {
    timeout: 15_000,
    message: 'the cluster instance to be ready',
  });
  // Labelled families are exposed once they have a series: traffic of each kind makes them.
  const sock = await connect(stack.url, { cookie: 'sid=alice-token', transports: ['websocket'] }); // session look-up, connect
  await connectError(stack.url, { cookie: 'sid=nobody', transports: ['websocket'] }); // a reject
  await stack.publish({ userId: 'alice', data: { title: 'dashboard' } }); // publish, delivery
  assert.equal((await fetch(`${stack.url}/`)).status < 500, true); // a proxied request
  closeAll([sock]);
  await stack.fixture.stop(); // the app gone: an upstream error
  assert.equal((await fetch(`${stack.url}/`)).status, 502);
  const scrape = (await publishApi(stack.publishSocket, 'GET', '/metrics')).text;
  assert.match(scrape, /^sockgate_cluster_link_up 1$/m, 'the Redis link is up');

  const dashboard = JSON.parse(
    fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'grafana', 'dashboards', 'sockgate.json'), 'utf8'),
  );
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
  assert.ok(exprs.length >= 12, `${exprs.length} queries`);
  const queried = new Set(exprs.flatMap((e) => e.match(/sockgate_[a-z_]+/g) ?? []));
  const exposed = exposedNames(scrape);
  const missing = [...queried].filter((name) => !exposed.has(name));
  assert.deepEqual(missing, [], `queried by the dashboard but not exposed: ${missing.join(', ')}`);
  for (const must of ['sockgate_sockets_open', 'sockgate_cluster_link_up', 'sockgate_publish_delivery_seconds_bucket']) {
    assert.ok(queried.has(must), `the dashboard shows ${must}`);
  }
});

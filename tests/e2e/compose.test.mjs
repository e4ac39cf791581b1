// compose.yaml and deploy/ without a Docker daemon: the compose file parses and refers to
// files and ports that exist, Prometheus accepts its config (promtool), and deploy/nginx.conf —
// adapted to loopback ports only — balances a real two-instance cluster (real redis-server):
// socket.io-client connects through nginx (polling, then the upgrade) and gets a publish made
// on the other instance.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  REPO_ROOT, closeAll, connect, freePort, publishApi, publishOk, startFixture, startSockgate, waitFor, withTimeout,
} from '../js/harness.mjs';
import { findRedisServer, startRedis } from '../js/cluster-helpers.mjs';

const fixtureRequire = createRequire(path.join(REPO_ROOT, 'tests', 'fixture', 'package.json'));
const YAML = fixtureRequire('yaml');
const read = (p) => fs.readFileSync(path.join(REPO_ROOT, p), 'utf8');
const onPath = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

test('compose.yaml parses and refers to files and ports that exist', () => {
  const compose = YAML.parse(read('compose.yaml'), { merge: true });
  const s = compose.services;
  for (const name of ['redis', 'app1', 'app2', 'nginx', 'prometheus', 'grafana']) assert.ok(s[name], `service ${name}`);
  for (const svc of Object.values(s)) {
    for (const v of svc.volumes ?? []) {
      const src = v.split(':')[0];
      assert.ok(fs.existsSync(path.join(REPO_ROOT, src)), `volume source ${src} exists`);
    }
  }
  for (const app of [s.app1, s.app2]) {
    assert.equal(app.build.context, '.');
    assert.ok(fs.existsSync(path.join(REPO_ROOT, 'Dockerfile')));
    assert.equal(app.environment.SIDECAR_CLUSTER__REDIS_URL, 'redis://redis:6379');
    assert.equal(app.depends_on.redis.condition, 'service_healthy');
  }
  // nginx's upstreams are the app services on the image's $PORT; Prometheus scrapes their
  // admin listener.
  const imagePort = read('Dockerfile').match(/PORT=(\d+)/)[1];
  const upstreams = [...read('deploy/nginx.conf').matchAll(/^\s*server (\w+):(\d+);/gm)].map((m) => `${m[1]}:${m[2]}`);
  assert.deepEqual(upstreams, [`app1:${imagePort}`, `app2:${imagePort}`]);
  const adminPort = s.app1.environment.SIDECAR_ADMIN__LISTEN.split(':').pop();
  const prom = YAML.parse(read('deploy/prometheus.yml'));
  assert.deepEqual(prom.scrape_configs[0].static_configs[0].targets, [`app1:${adminPort}`, `app2:${adminPort}`]);
  const ds = YAML.parse(read('deploy/grafana/provisioning/datasources/prometheus.yml'));
  assert.equal(ds.datasources[0].url, `http://prometheus:${s.prometheus.ports[0].split(':')[1]}`);
  const dashboards = YAML.parse(read('deploy/grafana/provisioning/dashboards/sockgate.yml'));
  const mounted = s.grafana.volumes.find((v) => v.startsWith('./deploy/grafana/dashboards:')).split(':')[1];
  assert.equal(dashboards.providers[0].options.path, mounted);
});

test('promtool accepts deploy/prometheus.yml', { skip: onPath('promtool') ? false : 'promtool is not installed (apt-get install prometheus)' }, () => {
  const r = spawnSync('promtool', ['check', 'config', path.join(REPO_ROOT, 'deploy', 'prometheus.yml')], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

const NGINX_SKIP = !onPath('nginx') ? 'nginx is not installed (apt-get install nginx-light)' : !findRedisServer() ? 'redis-server is not on PATH' : false;

test('deploy/nginx.conf in front of two instances: polling + upgrade, a publish on the other instance arrives', { skip: NGINX_SKIP, timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sockgate-nginx-'));
  const redis = await startRedis(await freePort());
  const app = await startFixture();
  const env = { SIDECAR_CLUSTER__REDIS_URL: redis.url, SIDECAR_PROXY__TRUST_FORWARDED: 'true', SIDECAR_LOG__FILTER: 'error' };
  const [a, b] = await Promise.all([startSockgate({ upstreamUrl: app.url, env }), startSockgate({ upstreamUrl: app.url, env })]);
  const lbPort = await freePort();
  // The shipped file with only its addresses made local, and nginx's own files in `dir`.
  const conf = read('deploy/nginx.conf')
    .replace('server app1:3000;', `server 127.0.0.1:${a.port};`)
    .replace('server app2:3000;', `server 127.0.0.1:${b.port};`)
    .replace('listen 80;', `listen 127.0.0.1:${lbPort};`)
    .replace('http {', `http {\n  access_log off;\n${['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${dir}/${t};`).join('\n')}`);
  assert.notEqual(conf, read('deploy/nginx.conf'));
  fs.writeFileSync(path.join(dir, 'nginx.conf'), `pid ${dir}/nginx.pid;\nerror_log ${dir}/error.log warn;\n${conf}`);
  const nginx = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off; master_process off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let nginxOut = '';
  nginx.stderr.on('data', (d) => (nginxOut += d));
  const nginxExit = new Promise((r) => nginx.on('exit', r));
  const sockets = [];
  after(async () => {
    closeAll(sockets);
    nginx.kill('SIGKILL');
    await withTimeout(nginxExit, 5000, 'nginx to exit').catch(() => {});
    await Promise.all([a.stop(), b.stop(), app.stop()]).catch(() => {});
    await redis.kill('SIGKILL').catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const lb = `http://127.0.0.1:${lbPort}`;
  await waitFor(async () => (await fetch(`${lb}/`).then((r) => r.status).catch(() => 0)) > 0, {
    timeout: 10_000,
    message: `nginx to answer (${nginxOut})`,
  });
  for (const s of [a, b]) {
    await waitFor(async () => (await publishApi(s.publishSocket, 'GET', '/readyz')).status === 200, { timeout: 15_000, message: 'cluster ready' });
  }

  const sock = await connect(lb, { cookie: 'sid=alice-token' });
  sockets.push(sock);
  const engine = sock.io.engine;
  if (engine.transport.name !== 'websocket') {
    await withTimeout(new Promise((r) => engine.once('upgrade', r)), 10_000, 'the upgrade to WebSocket through nginx');
  }
  assert.equal(engine.transport.name, 'websocket');

  // Which instance holds the socket (its own gauge), then publish on the other one.
  const local = async (s) => Number((await publishApi(s.publishSocket, 'GET', '/metrics')).text.match(/^sockgate_sockets_open\{transport="websocket"\} (\d+)/m)?.[1] ?? 0);
  // The client counts the upgrade as done when it sends its last upgrade packet; the server
  // moves the session to WebSocket when that packet arrives, a moment later.
  let [onA, onB] = [0, 0];
  await waitFor(async () => {
    [onA, onB] = [await local(a), await local(b)];
    return onA + onB === 1;
  }, { timeout: 5000, message: 'the upgraded socket counted by its instance' }).catch(() => {});
  assert.equal(onA + onB, 1, `one socket in the cluster (A ${onA}, B ${onB})`);
  const other = onA ? b : a;
  const got = new Promise((resolve) => sock.on('notification', resolve));
  await publishOk(other.publishSocket, { userId: 'alice', data: { title: 'via the other instance' } });
  const msg = await withTimeout(got, 5000, 'the publish from the other instance');
  assert.equal(msg.title, 'via the other instance');
});

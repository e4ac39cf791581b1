// Protocol fidelity at the wire level (issue 16): Engine.IO error bodies and session
// lifecycle as the reference JavaScript server (`engine.io`) has them.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/protocol-wire.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { startStack, waitFor, sleep, withTimeout } from './harness.mjs';
import { pollingHandshake } from './fault-helpers.mjs';

let s;
const COOKIE = 'sid=user-wire';

before(async () => {
  s = await startStack();
});

after(async () => {
  await s?.stop();
});

/** A request to the Engine.IO endpoint; resolves {status, json}. */
function engineRequest(query, { method = 'GET', cookie = COOKIE, body = '40' } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${s.url}/socket.io/?${query}`,
      { method, agent: false, headers: { cookie, 'content-type': 'text/plain;charset=UTF-8' } },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode, text, json });
        });
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${query}: no answer`)));
    req.end(method === 'POST' ? body : undefined);
  });
}

// The reference server's bodies: `{"code":<number>,"message":"…"}` (engine.io `Server.errors`).
const ERROR_CASES = [
  ['an unknown sid', 'EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA', 'GET', 1, 'Session ID unknown'],
  ['an unknown sid of the engine\'s format', 'EIO=4&transport=polling&sid=AAAAAAAAAAAAAAHs', 'GET', 1, 'Session ID unknown'],
  ['a POST for an unknown sid', 'EIO=4&transport=polling&sid=AAAAAAAAAAAAAAHs', 'POST', 1, 'Session ID unknown'],
  ['an unknown transport', 'EIO=4&transport=carrier-pigeon', 'GET', 0, 'Transport unknown'],
  ['a handshake by POST', 'EIO=4&transport=polling', 'POST', 2, 'Bad handshake method'],
  ['Engine.IO 3 (socket.io-client 2.x)', 'EIO=3&transport=polling', 'GET', 5, 'Unsupported protocol version'],
];

for (const [what, query, method, code, message] of ERROR_CASES) {
  test(`${what} → 400 with a numeric error code, as the reference server`, async () => {
    const r = await engineRequest(query, { method });
    assert.equal(r.status, 400, r.text);
    assert.ok(r.json, `a JSON body: ${r.text}`);
    assert.equal(typeof r.json.code, 'number', `code is a number: ${r.text}`);
    assert.deepEqual(r.json, { code, message });
  });
}

test('the sid of a session that just closed → numeric code too (answered by the engine)', async () => {
  // sockgate's admission still knows the sid for an instant: the engine answers.
  const { sid } = await pollingHandshake(s.url, COOKIE);
  assert.ok(sid);
  const connect = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40' });
  assert.equal(connect.status, 200, connect.text);
  const close = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '1' });
  assert.equal(close.status, 200, close.text);
  const r = await engineRequest(`EIO=4&transport=polling&sid=${sid}`);
  assert.equal(r.status, 400, r.text);
  assert.equal(typeof r.json?.code, 'number', r.text);
  assert.deepEqual(r.json, { code: 1, message: 'Session ID unknown' });
});

/**
 * Starts a long-poll GET on its own TCP connection and resolves, once the request is written
 * and no answer has come for `settleMs`, with the raw socket (the poll is then pending).
 */
function pendingPoll(sid, cookie, settleMs = 300) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port: s.port, host: '127.0.0.1' }, () => {
      sock.write(
        `GET /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\n` +
          `Host: 127.0.0.1:${s.port}\r\nCookie: ${cookie}\r\n\r\n`,
      );
      setTimeout(() => (answered ? reject(new Error(`the poll was answered: ${answered}`)) : resolve(sock)), settleMs);
    });
    let answered = '';
    sock.on('data', (d) => (answered += d.toString('latin1')));
    sock.on('error', reject);
  });
}

test('a long-poll aborted by the client closes the session, as the reference server does', async () => {
  const cookie = 'sid=user-aborted';
  const { sid } = await pollingHandshake(s.url, cookie);
  assert.ok(sid);
  const connect = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40', cookie });
  assert.equal(connect.status, 200, connect.text);
  const first = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { cookie });
  assert.match(first.text, /^40\{"sid"/, 'the Socket.IO CONNECT reply');
  await waitFor(async () => (await s.publishApi('GET', '/users/aborted')).json?.sockets === 1, {
    message: 'the socket is connected',
  });
  // Nothing is queued: this poll waits (until the first ping, `ping_interval` away).
  const sock = await pendingPoll(sid, cookie);
  sock.destroy();
  // Not probed with another poll first: a second poll while the first is pending closes the
  // session anyway (multiple polling), which would hide whether the abort did.
  await waitFor(async () => (await s.publishApi('GET', '/users/aborted')).json?.sockets === 0, {
    timeout: 5000,
    message: 'the socket left presence within 5 s of the abort (ping interval is 25 s)',
  });
  const next = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { cookie });
  assert.equal(next.status, 400, next.text);
  assert.deepEqual(next.json, { code: 1, message: 'Session ID unknown' }, `body: ${next.text}`);
  await waitFor(async () => (await s.publishApi('GET', '/stats')).json?.connections === 0, {
    timeout: 5000,
    message: '/stats connections back to 0',
  });
});

test('with the default parser, binary from a client still closes its WebSocket (msgpack sessions only accept it)', async () => {
  const { WebSocket } = await import('./fault-helpers.mjs');
  const ws = new WebSocket(`${s.url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, {
    headers: { cookie: 'sid=user-binary' },
  });
  ws.on('error', () => {});
  const frames = [];
  const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  ws.on('message', (data, isBinary) => {
    frames.push(data.toString());
    if (!isBinary && data.toString().startsWith('0{')) ws.send('40');
    if (!isBinary && data.toString().startsWith('40{')) {
      // An event with one binary attachment: accepted, Socket.IO would complete (and drop) it.
      ws.send('451-["hello",{"_placeholder":true,"num":0}]');
      ws.send(Buffer.from([1, 2, 3]));
    }
  });
  const code = await Promise.race([closed, sleep(5000).then(() => 'still open')]);
  assert.notEqual(code, 'still open', `closed after a binary message: ${JSON.stringify(frames)}`);
  assert.ok(frames.some((f) => f.startsWith('40{')), 'it had connected first');
});

// ---------------------------------------------------------------------------
// Handshakes, CONNECT and user messages, frame by frame
// ---------------------------------------------------------------------------

/**
 * A raw Engine.IO WebSocket. `frames` holds every text frame received; `next(pred)` resolves
 * with the first frame (already received or to come) matching `pred` that `next` has not
 * returned before; `closed` resolves with {code, ms since open}.
 */
async function rawWs(url, { cookie = COOKIE, query = '' } = {}) {
  const { WebSocket } = await import('./fault-helpers.mjs');
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket${query}`, {
    headers: cookie ? { cookie } : {},
  });
  const opened = Date.now();
  const frames = [];
  const waiters = new Set();
  let seen = 0;
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    frames.push(isBinary ? data : data.toString());
    for (const w of waiters) w();
  });
  const closed = new Promise((resolve) => ws.once('close', (code) => resolve({ code, ms: Date.now() - opened })));
  closed.then(() => {
    for (const w of waiters) w();
  });
  let isClosed = false;
  closed.then(() => (isClosed = true));
  const next = (pred, timeout = 5000, what = 'a matching frame') =>
    new Promise((resolve, reject) => {
      const check = () => {
        const i = frames.findIndex((f, k) => k >= seen && typeof f === 'string' && pred(f));
        if (i >= 0) {
          seen = i + 1;
          done();
          resolve(frames[i]);
        } else if (isClosed) {
          done();
          reject(new Error(`closed before ${what}: ${JSON.stringify(frames)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeout} ms: ${JSON.stringify(frames)}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  after(() => ws.terminate());
  const open = new Promise((resolve) => ws.once('open', resolve));
  return { ws, frames, next, closed, open, send: (f) => ws.send(f) };
}

/** The JSON of an Engine.IO OPEN packet (`0{…}`). */
function openPacket(text) {
  assert.match(text, /^0\{/, `an OPEN packet: ${text}`);
  return JSON.parse(text.slice(1));
}

/** Asserts the fields and types the reference server (engine.io 6) puts in its OPEN packet. */
function assertOpenPacket(open, upgrades) {
  assert.deepEqual(Object.keys(open).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
  assert.equal(typeof open.sid, 'string');
  assert.match(open.sid, /^[A-Za-z0-9_-]+$/, 'a URL-safe sid');
  assert.deepEqual(open.upgrades, upgrades);
  // sockgate's defaults: realtime.ping_interval_ms, ping_timeout_ms, max_poll_payload_bytes.
  assert.equal(open.pingInterval, 25_000);
  assert.equal(open.pingTimeout, 20_000);
  assert.equal(open.maxPayload, 16 * 1024);
}

test('the OPEN packet carries sid, upgrades, pingInterval, pingTimeout and maxPayload with the reference types', async () => {
  const polling = await engineRequest('EIO=4&transport=polling');
  assert.equal(polling.status, 200, polling.text);
  assertOpenPacket(openPacket(polling.text), ['websocket']);
  const ws = await rawWs(s.url);
  assertOpenPacket(openPacket(await ws.next((f) => f.startsWith('0'), 5000, 'OPEN')), []);
  ws.ws.close();
});

// The reference server gives the Socket.IO socket an id of its own; socketioxide reuses the
// Engine.IO sid (README, Protocol compatibility). Asserted so the README changes with it.
test('CONNECT: 40 is answered 40{"sid"}; the Socket.IO sid is the Engine.IO sid (polling and WebSocket)', async () => {
  // Polling: handshake, POST 40, GET the answer.
  const { sid } = await pollingHandshake(s.url, COOKIE);
  const post = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40' });
  assert.equal(post.status, 200, post.text);
  assert.equal(post.text, 'ok');
  const answer = await engineRequest(`EIO=4&transport=polling&sid=${sid}`);
  assert.match(answer.text, /^40\{/, answer.text);
  const viaPolling = JSON.parse(answer.text.slice(2));
  assert.deepEqual(Object.keys(viaPolling), ['sid']);
  assert.equal(typeof viaPolling.sid, 'string');
  assert.equal(viaPolling.sid, sid, 'socketioxide: the Socket.IO sid is the Engine.IO sid');
  await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '1' });
  // WebSocket.
  const ws = await rawWs(s.url);
  const open = openPacket(await ws.next((f) => f.startsWith('0'), 5000, 'OPEN'));
  ws.send('40');
  const connect = await ws.next((f) => f.startsWith('4'), 5000, 'the CONNECT answer');
  assert.match(connect, /^40\{"sid":"[A-Za-z0-9_-]+"\}$/, connect);
  assert.equal(JSON.parse(connect.slice(2)).sid, open.sid);
  ws.ws.close();
});

// Keys in an order no sorting gives, nested objects, arrays, unicode, escapes: what the app
// writes with JSON.stringify is what the client's frame carries.
const DATA_JSON = '{"title":"Build finished","z":1,"a":[true,null,2.5,{"y":"é","b":"\\"q\\""}],"m":{"zz":0,"aa":-1}}';

async function connectedUserWs(userId, connectPacket) {
  const ws = await rawWs(s.url, { cookie: `sid=user-${userId}` });
  await ws.next((f) => f.startsWith('0'), 5000, 'OPEN');
  ws.send(connectPacket);
  await ws.next((f) => f.startsWith('40{'), 5000, 'the CONNECT answer');
  await waitFor(async () => (await s.publishApi('GET', `/users/${userId}`)).json?.sockets === 1, {
    message: `${userId} is connected`,
  });
  return ws;
}

/** Publishes `data` (raw JSON text, so its bytes are exactly the app's) to a user. */
async function publishRaw(userId, dataJson) {
  const r = await s.publishApi('POST', '/publish', `{"userId":${JSON.stringify(userId)},"event":"notification","data":${dataJson}}`);
  assert.equal(r.status, 200, r.text);
}

test('a user message without offset is one argument, byte for byte as published (keys in the app\'s order)', async () => {
  const ws = await connectedUserWs('wire-plain', '40');
  await publishRaw('wire-plain', DATA_JSON);
  const frame = await ws.next((f) => f.startsWith('42'), 5000, 'the message');
  assert.equal(frame, `42["notification",${DATA_JSON}]`);
  ws.ws.close();
});

test('a user message to a socket that asked for offsets is (data, {offset, room}), data byte for byte as published', async () => {
  const ws = await connectedUserWs('wire-offset', '40{"offset":null}');
  await publishRaw('wire-offset', DATA_JSON);
  const frame = await ws.next((f) => f.startsWith('42'), 5000, 'the message');
  const prefix = `42["notification",${DATA_JSON},`;
  assert.ok(frame.startsWith(prefix), `${frame}\n does not start with\n${prefix}`);
  const meta = JSON.parse(frame.slice(prefix.length, -1));
  assert.deepEqual(Object.keys(meta), ['offset', 'room']);
  assert.equal(typeof meta.offset, 'string');
  assert.equal(meta.room, 'user:wire-offset');
  assert.ok(frame.endsWith('}]'));
  ws.ws.close();
});

test('an event a client emits with an ack gets no answer; the socket stays connected and gets messages', async () => {
  const ws = await connectedUserWs('wire-ack', '40');
  ws.send('421["hello","sockgate"]'); // EVENT with ack id 1
  ws.send('42["hello"]');
  await assert.rejects(ws.next((f) => f.startsWith('43'), 1500, 'an ACK'), /no an ACK within/);
  await publishRaw('wire-ack', '"still here"');
  assert.equal(await ws.next((f) => f.startsWith('42'), 5000, 'the message'), '42["notification","still here"]');
  assert.ok(!ws.frames.some((f) => typeof f === 'string' && /^4[134]/.test(f)), `no ack, disconnect or error: ${ws.frames}`);
  ws.ws.close();
});

// ---------------------------------------------------------------------------
// Sessions and transports the request does not match
// ---------------------------------------------------------------------------

/** Polling handshake, CONNECT, then the upgrade to WebSocket (probe, UPGRADE). Returns the sid. */
async function upgradedSession(cookie) {
  const { sid } = await pollingHandshake(s.url, cookie);
  assert.ok(sid);
  await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40', cookie });
  assert.match((await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { cookie })).text, /^40\{/);
  const ws = await rawWs(s.url, { cookie, query: `&sid=${sid}` });
  await withTimeout(ws.open, 5000, 'the upgrade');
  ws.send('2probe');
  await ws.next((f) => f === '3probe', 5000, '3probe');
  ws.send('5');
  return { sid, ws };
}

test('polling a session that has upgraded to WebSocket → 400 {"code":3,"message":"Bad request"}; the session stays', async () => {
  const cookie = 'sid=user-wire-upgraded';
  const { sid, ws } = await upgradedSession(cookie);
  // Until the server has read the UPGRADE packet, a poll is answered with a NOOP.
  const r = await waitFor(
    async () => {
      const r = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { cookie });
      return r.status !== 200 && r;
    },
    { message: 'a poll refused once the upgrade is done' },
  );
  assert.equal(r.status, 400, r.text);
  assert.deepEqual(r.json, { code: 3, message: 'Bad request' }, r.text);
  const post = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40', cookie });
  assert.deepEqual([post.status, post.json], [400, { code: 3, message: 'Bad request' }], post.text);
  await publishRaw('wire-upgraded', '1');
  assert.equal(await ws.next((f) => f.startsWith('42'), 5000, 'a message over the WebSocket'), '42["notification",1]');
  ws.ws.close();
});

test('polling with the sid of a WebSocket session → 400 {"code":3,"message":"Bad request"}, as the reference server', async () => {
  const ws = await rawWs(s.url);
  const { sid } = openPacket(await ws.next((f) => f.startsWith('0'), 5000, 'OPEN'));
  for (const method of ['GET', 'POST']) {
    const r = await engineRequest(`EIO=4&transport=polling&sid=${sid}`, { method });
    assert.equal(r.status, 400, `${method}: ${r.text}`);
    assert.deepEqual(r.json, { code: 3, message: 'Bad request' }, `${method}: ${r.text}`);
  }
  // Nor does the sid open anything else: a second WebSocket on it is closed at once, unread.
  const other = await rawWs(s.url, { cookie: 'sid=user-mallory', query: `&sid=${sid}` });
  const closed = await withTimeout(other.closed, 5000, 'the second WebSocket to be closed');
  assert.deepEqual(other.frames, [], `nothing sent on a second WebSocket: ${closed.code}`);
  ws.send('40');
  await ws.next((f) => f.startsWith('40{'), 5000, 'the session still connects');
  ws.ws.close();
});

/** A WebSocket upgrade request; resolves {status, json} when it is refused, {upgraded} if not. */
async function wsUpgrade(url, { cookie = COOKIE, query }) {
  const { WebSocket } = await import('./fault-helpers.mjs');
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?${query}`, { headers: { cookie } });
  ws.on('error', () => {});
  return withTimeout(
    new Promise((resolve) => {
      ws.once('upgrade', () => {
        ws.terminate();
        resolve({ upgraded: true });
      });
      ws.once('unexpected-response', (_req, res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode, text, json });
        });
      });
    }),
    5000,
    `an answer to the upgrade ${query}`,
  );
}

test('a WebSocket upgrade for an unknown sid → 400 {"code":1} before any upgrade, as the reference server', async () => {
  // One of the reference server's length, one of engineioxide's (16 characters: parsed, then
  // looked up).
  for (const sid of ['AAAAAAAAAAAAAAAAAAAA', 'AAAAAAAAAAAAAAHs']) {
    const r = await wsUpgrade(s.url, { query: `EIO=4&transport=websocket&sid=${sid}` });
    assert.equal(r.status, 400, `${sid}: ${JSON.stringify(r)}`);
    assert.deepEqual(r.json, { code: 1, message: 'Session ID unknown' }, sid);
  }
});

test('a transport the server does not offer → 400 {"code":0,"message":"Transport unknown"}; a polling-only server offers no upgrade', async () => {
  const env = { SIDECAR_REALTIME__TRANSPORTS: '["polling"]' };
  const pollingOnly = await startStack({ env });
  after(() => pollingOnly.stop());
  const up = await wsUpgrade(pollingOnly.url, { query: 'EIO=4&transport=websocket' });
  assert.equal(up.status, 400, JSON.stringify(up));
  assert.deepEqual(up.json, { code: 0, message: 'Transport unknown' });
  const open = await fetch(`${pollingOnly.url}/socket.io/?EIO=4&transport=polling`, { headers: { cookie: COOKIE } });
  assert.equal(open.status, 200);
  assert.deepEqual(openPacket(await open.text()).upgrades, [], 'no websocket upgrade offered');

  const wsOnly = await startStack({ env: { SIDECAR_REALTIME__TRANSPORTS: '["websocket"]' } });
  after(() => wsOnly.stop());
  for (const [method, query] of [
    ['GET', 'EIO=4&transport=polling'],
    ['GET', 'EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA'],
  ]) {
    const res = await fetch(`${wsOnly.url}/socket.io/?${query}`, { method, headers: { cookie: COOKIE } });
    const text = await res.text();
    assert.equal(res.status, 400, `${query}: ${text}`);
    assert.deepEqual(JSON.parse(text), { code: 0, message: 'Transport unknown' }, query);
  }
});

test('a WebSocket session that never sends CONNECT is closed after realtime.connect_timeout_ms', async () => {
  const quick = await startStack({
    env: {
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
      SIDECAR_REALTIME__CONNECT_TIMEOUT_MS: '1500',
      SIDECAR_AUTH__TIMEOUT_MS: '1000',
    },
  });
  after(() => quick.stop());
  const ws = await rawWs(quick.url);
  await ws.next((f) => f.startsWith('0'), 5000, 'OPEN');
  const closed = await withTimeout(ws.closed, 6000, 'the session to be closed (without the key, socketioxide closes it after 45 s)');
  assert.ok(closed.ms >= 1300 && closed.ms < 4500, `closed ${closed.ms} ms after the open (connect_timeout_ms = 1500)`);
  assert.ok(!ws.frames.some((f) => typeof f === 'string' && f.startsWith('4')), `no Socket.IO packet: ${ws.frames}`);
  await waitFor(async () => (await quick.publishApi('GET', '/stats')).json?.connections === 0, {
    message: '/stats connections back to 0',
  });
});

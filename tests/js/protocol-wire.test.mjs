// Protocol fidelity at the wire level (issue 16): Engine.IO error bodies and session
// lifecycle as the reference JavaScript server (`engine.io`) has them.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/protocol-wire.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { startStack, waitFor, sleep } from './harness.mjs';
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

// Protocol fidelity at the wire level (issue 16): Engine.IO error bodies and session
// lifecycle as the reference JavaScript server (`engine.io`) has them.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/protocol-wire.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startStack } from './harness.mjs';
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

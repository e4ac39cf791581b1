// The edges a faster write path must keep (issue 32, "Must not change"): per-socket order when
// per-user publishes and broadcasts interleave, a socket whose kernel buffer fills in the middle
// of a broadcast, a broadcast that races the polling → WebSocket upgrade, and broadcasts during a
// drain. Each test numbers its messages and asserts what each socket received, in order, with no
// gap and no duplicate — the guard for direct writes that must never overtake a queued packet.
//   SOCKGATE_BIN=$PWD/target/debug/sockgate node --test tests/js/broadcast-edges.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startStack, client, connect, closeAll, recorder, waitFor, nextEvent } from './harness.mjs';
import { stalledSocketIoClient } from './fault-helpers.mjs';

/** 60 KiB: a few hundred of these fill any loopback socket buffer. */
const BIG = 'x'.repeat(60 * 1024);

/** The message index carried as "i:…" in a `seq` event's data. */
const indexOf = (data) => Number.parseInt(String(data), 10);

/** The `seq` indices a raw Engine.IO socket received, from its text frames (`42["seq","i:…"]`). */
function rawIndices(messages) {
  const out = [];
  for (const m of messages) {
    if (typeof m !== 'string' || !m.startsWith('42')) continue;
    const [event, data] = JSON.parse(m.slice(2));
    if (event === 'seq') out.push(indexOf(data));
  }
  return out;
}

/** An HTTP agent that keeps its connection between requests, as a browser does. */
const keepAlive = () => new http.Agent({ keepAlive: true, maxSockets: 2 });

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

/** Asserts `got` is exactly `expected` and, when not, says where it first differs. */
function assertSequence(got, expected, who) {
  const at = got.findIndex((v, i) => v !== expected[i]);
  assert.deepEqual(
    got,
    expected,
    `${who}: ${got.length} of ${expected.length} messages` +
      (at >= 0 ? `, first wrong at position ${at}: got ${got[at]}, expected ${expected[at]}` : ''),
  );
}

async function publish(s, target, i, data = `${i}:`) {
  const r = await s.publishApi('POST', '/publish', { ...target, event: 'seq', data });
  assert.equal(r.status, 200, r.text);
}

test('a socket whose kernel buffer fills mid-broadcast: the others get every message in order, it gets all of them in order once it reads again', async () => {
  // A queue large enough not to drop the stalled socket: this test is about order, not limits.
  const s = await startStack({ env: { SIDECAR_REALTIME__MAX_BUFFER_SIZE: '4096' } });
  const sockets = [];
  try {
    const stalled = await stalledSocketIoClient(s.url, { cookie: 'sid=user-stuck' });
    sockets.push(await connect(s.url, { cookie: 'sid=user-ws', transports: ['websocket'] }));
    sockets.push(await connect(s.url, { cookie: 'sid=user-poll', transports: ['polling'] }));
    const records = sockets.map(recorder);
    const N = 200; // 12 MB to a socket that does not read: its writer blocks part-way
    for (let i = 0; i < N; i += 1) await publish(s, { broadcast: true }, i, `${i}:${BIG}`);
    for (const [k, rec] of records.entries()) {
      await rec.waitCount(N, `${N} broadcasts at reader ${k}`, 30_000);
      assertSequence(rec.of('seq').map(indexOf), range(0, N), `reading socket ${k}`);
    }
    stalled.resume();
    await waitFor(() => rawIndices(stalled.messages).length >= N, {
      timeout: 30_000,
      message: `${N} broadcasts at the socket that read late`,
    });
    assertSequence(rawIndices(stalled.messages), range(0, N), 'the socket that read late');
  } finally {
    closeAll(sockets);
    await s.stop();
  }
});

test('per-user publishes and broadcasts interleaved, the reader resuming mid-flood: every message once, in publish order', async () => {
  const s = await startStack({ env: { SIDECAR_REALTIME__MAX_BUFFER_SIZE: '4096' } });
  const sockets = [];
  try {
    const stalled = await stalledSocketIoClient(s.url, { cookie: 'sid=user-mixed' });
    const other = await connect(s.url, { cookie: 'sid=user-other', transports: ['websocket'] });
    sockets.push(other);
    const otherRec = recorder(other);
    // Even indices are broadcasts, odd ones per-user publishes (a different path to the same
    // socket's queue). Large ones first, so the writer is behind when the reader resumes and
    // the queue empties while publishes keep coming.
    const N = 400;
    const RESUME_AT = 150;
    for (let i = 0; i < N; i += 1) {
      if (i === RESUME_AT) stalled.resume();
      const data = i < RESUME_AT ? `${i}:${BIG}` : `${i}:`;
      await publish(s, i % 2 === 0 ? { broadcast: true } : { userId: 'mixed' }, i, data);
    }
    await waitFor(() => rawIndices(stalled.messages).length >= N, {
      timeout: 30_000,
      message: `${N} messages at the resumed socket`,
    });
    assertSequence(rawIndices(stalled.messages), range(0, N), 'the resumed socket');
    await otherRec.waitCount(N / 2, `${N / 2} broadcasts at the other socket`, 30_000);
    assertSequence(
      otherRec.of('seq').map(indexOf),
      range(0, N).filter((i) => i % 2 === 0),
      'the other socket (broadcasts only)',
    );
  } finally {
    closeAll(sockets);
    await s.stop();
  }
});

test('broadcasts during the polling → WebSocket upgrade: each stream (broadcasts, the user room) complete and in publish order', async (t) => {
  const s = await startStack();
  try {
    // Several rounds: each publishes without pause from before the socket opens (over
    // long-polling) until well after the client has probed and switched to WebSocket.
    for (let round = 0; round < 4; round += 1) {
      const sock = client(s.url, { cookie: `sid=user-up${round}`, transports: ['polling', 'websocket'] });
      const rec = recorder(sock);
      let sent = 0;
      let connectedAt = -1;
      let upgradedAt = -1;
      sock.once('connect', () => (connectedAt = sent));
      sock.io.once('open', () => sock.io.engine.once('upgrade', () => (upgradedAt = sent)));
      // Batches of 20 (in order within a batch, and batch after batch) keep the socket's queue
      // busy while the client probes, pauses polling and switches. Bounded by count: until 60
      // messages after the upgrade.
      while (sent < 4000 && (upgradedAt < 0 || sent < upgradedAt + 60)) {
        const messages = range(sent, sent + 20).map((i) => ({
          ...(i % 2 === 0 ? { broadcast: true } : { userId: `up${round}` }),
          event: 'seq',
          data: `${i}:`,
        }));
        const r = await s.publishApi('POST', '/publish/batch', { messages });
        assert.equal(r.status, 200, r.text);
        sent += messages.length;
      }
      t.diagnostic(`round ${round}: connected after ${connectedAt}, upgraded after ${upgradedAt} of ${sent} messages`);
      assert.ok(connectedAt >= 0 && upgradedAt >= 0, `connected (${connectedAt}) and upgraded (${upgradedAt})`);
      assert.equal(sock.io.engine.transport.name, 'websocket');
      // What was published before the socket joined a room has no recipient here, and a room
      // joined at connect replays what it missed from its history, so the two streams (even:
      // broadcasts, odd: the user's room) are each checked: from its first message, every one,
      // in order, up to the last published.
      await waitFor(() => rec.of('seq').map(indexOf).at(-1) === sent - 1, {
        timeout: 15_000,
        message: `the last of ${sent} messages`,
      });
      const got = rec.of('seq').map(indexOf);
      for (const [name, parity] of [['broadcasts', 0], ["the user's room", 1]]) {
        const stream = got.filter((i) => i % 2 === parity);
        const last = sent - 2 + parity;
        assert.ok(stream[0] <= connectedAt + 1, `${name}: first ${stream[0]}, connected after ${connectedAt}`);
        const expected = range(0, (last - stream[0]) / 2 + 1).map((k) => stream[0] + 2 * k);
        assertSequence(stream, expected, `round ${round}, ${name}`);
      }
      closeAll([sock]);
    }
  } finally {
    await s.stop();
  }
});

test('broadcasts during a drain: every socket, polling or WebSocket, gets every accepted message, in order, before it is closed', async (t) => {
  const s = await startStack({ env: { SIDECAR_SERVER__DRAIN_TIMEOUT_MS: '5000' } });
  const sockets = [];
  try {
    for (let i = 0; i < 6; i += 1) {
      // Long-polling clients keep their connection between polls, as browsers do (Node's
      // client opens a new one per poll unless given an agent): the drain refuses new
      // connections, so a client that needs one cannot collect its last packets.
      const options = i % 2 ? { transports: ['websocket'] } : { transports: ['polling'], agent: keepAlive() };
      sockets.push(await connect(s.url, { cookie: `sid=user-d${i}`, ...options }));
    }
    const records = sockets.map(recorder);
    const disconnected = sockets.map((sock) => nextEvent(sock, 'disconnect', 15_000));
    let accepted = 0;
    let acceptedBeforeTerm = -1;
    let refusal = '';
    for (let i = 0; i < 2000; i += 1) {
      if (i === 100) {
        acceptedBeforeTerm = accepted;
        s.sockgate.child.kill('SIGTERM');
      }
      let r;
      try {
        r = await s.publishApi('POST', '/publish', { broadcast: true, event: 'seq', data: `${i}:` });
      } catch (e) {
        refusal = e.message; // the publish socket is gone: the drain ended
        break;
      }
      if (r.status !== 200) {
        refusal = `${r.status} ${r.text}`;
        break;
      }
      accepted += 1;
    }
    const reasons = await Promise.all(disconnected);
    t.diagnostic(
      `drain: ${acceptedBeforeTerm} accepted before SIGTERM, ${accepted} in all, then ${refusal}; disconnects ${JSON.stringify(reasons)}`,
    );
    assert.equal(acceptedBeforeTerm, 100, 'every publish before SIGTERM was accepted');
    assert.ok(refusal, 'publishing ends with a refusal (503 draining, then no publish socket)');
    const counts = records.map((rec, k) => `${k % 2 ? 'websocket' : 'polling'} ${rec.of('seq').length}`);
    t.diagnostic(`drain: messages per socket: ${counts.join(', ')}`);
    // The drain refuses publishes before it closes a socket: each accepted one was queued
    // for every socket before its close, and must reach it.
    for (const [k, rec] of records.entries()) {
      assertSequence(rec.of('seq').map(indexOf), range(0, accepted), `socket ${k} (${k % 2 ? 'websocket' : 'polling'})`);
    }
  } finally {
    closeAll(sockets);
    await s.stop();
  }
});

// Recovery for every room: messages published to a channel (a room from the session route, or
// one a client subscribed to) are kept with offsets like user-room messages, and a client that
// was away gets what it missed — at connect (`auth.offsets` {room: offset}) for its session
// rooms, or with `subscribe {room, offset}` — once, in order, before live messages, or
// `recovery_failed {reason, room}`. A client never gets the history of a room it is not in.
//   cargo build --bins && node --test tests/js/room-recovery.test.mjs  (cluster cases need redis-server)
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startFixture, startSockgate, startStack, client, recorder, waitFor, sleep, publishOk, connected, closeAll,
  freePort,
} from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';

const WS = ['websocket'];

/**
 * A client that remembers the last offset it saw per room (`meta.room`) and reports them on
 * every (re)connect: the user room's as `auth.offset`, the others in `auth.offsets`.
 */
function roomClient(url, cookie, opts = {}) {
  const state = { offset: null, offsets: {} };
  const socket = client(url, {
    cookie,
    transports: WS,
    autoConnect: false,
    auth: (cb) => cb({ offset: state.offset, offsets: { ...state.offsets } }),
    ...opts,
  });
  socket.onAny((_event, _data, meta) => {
    if (!meta || typeof meta.offset !== 'string' || typeof meta.room !== 'string') return;
    if (meta.room.startsWith('user:')) state.offset = meta.offset;
    else state.offsets[meta.room] = meta.offset;
  });
  return { socket, state };
}

const ask = (socket, event, payload, timeout = 4000) => socket.timeout(timeout).emitWithAck(event, payload);

/** Records every event (name, first argument, meta) and where acks came, in arrival order. */
function timeline(socket) {
  const items = [];
  socket.onAny((event, data, meta) => items.push({ event, data, meta }));
  return {
    items,
    of: (event) => items.filter((i) => i.event === event),
    mark: (label) => items.push({ event: `@${label}` }),
  };
}

async function gone(stack, user) {
  await waitFor(async () => (await stack.publishApi('GET', `/users/${user}`)).json.sockets === 0, {
    message: `sockgate saw ${user} leave`,
  });
}

describe('room recovery on one instance', () => {
  let s;
  before(async () => {
    s = await startStack({
      env: {
        SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
        SIDECAR_CHANNELS__MAX_ROOMS_PER_SOCKET: '4',
        SIDECAR_CHANNELS__MAX_SUBSCRIBES_PER_SEC: '50',
        SIDECAR_HISTORY__MAX_MESSAGES: '10',
      },
    });
  });
  after(() => s?.stop());

  const toRoom = (room, data) => s.publish({ room, event: 'team', data });

  test('a team room from the session is recovered across a reconnect: missed messages once, in order, before live; meta {offset, room}', async () => {
    await s.control({ sessionExtra: { rr1: { rooms: ['team:rr1'] } } });
    const { socket, state } = roomClient(s.url, 'sid=user-rr1');
    const rec = recorder(socket);
    await connected(socket);
    await toRoom('team:rr1', { n: 0 });
    await s.publish({ userId: 'rr1', data: { u: 0 } });
    await rec.waitCount(2);
    assert.deepEqual(Object.keys(rec.metas[0]), ['offset', 'room'], 'meta is {offset, room}');
    assert.equal(rec.metas[0].room, 'team:rr1');
    assert.equal(rec.metas[1].room, 'user:rr1', 'user-room messages say their room too');
    assert.ok(state.offsets['team:rr1']);

    socket.disconnect();
    await gone(s, 'rr1');
    for (let n = 1; n <= 8; n++) await toRoom('team:rr1', { n });
    // Reconnect, and publish a live one as soon as the client says it is connected.
    const live = new Promise((resolve) => socket.once('connect', resolve)).then(() => toRoom('team:rr1', { n: 9 }));
    socket.connect();
    await live;
    await rec.waitCount(11, '10 team messages and 1 notification');
    await sleep(300);
    const ns = rec.of('team').map((d) => d.n);
    assert.deepEqual(ns, Array.from({ length: 10 }, (_, i) => i), 'all once, in order, replay before live');
    const offsets = rec.metas.filter((m) => m.room === 'team:rr1').map((m) => m.offset);
    assert.equal(new Set(offsets).size, offsets.length, 'offsets are unique');
    assert.equal(rec.of('recovery_failed').length, 0);
    closeAll([socket]);
  });

  test('subscribe with an offset: the missed messages in order, then the ack, then live — none twice', async () => {
    await s.control({ allowed: { rr2: ['team:rr2'] } });
    const first = roomClient(s.url, 'sid=user-rr2');
    await connected(first.socket);
    assert.deepEqual(await ask(first.socket, 'subscribe', { room: 'team:rr2' }), { ok: true });
    const seen = recorder(first.socket);
    await toRoom('team:rr2', { n: 0 });
    await seen.waitCount(1);
    const offset = first.state.offsets['team:rr2'];
    assert.ok(offset, 'a subscribed room\'s messages carry an offset');
    closeAll([first.socket]);
    await gone(s, 'rr2');
    for (let n = 1; n <= 6; n++) await toRoom('team:rr2', { n });

    // Round 1 from the first message's offset (6 missed, 4 published meanwhile); round 2 from
    // the offset round 1 saw for n=4 (10 missed: all max_messages keeps, 4 meanwhile).
    let from = offset;
    let first4 = null;
    for (const round of [1, 2]) {
      // A plain socket (no offsets asked at the handshake) subscribing with an offset gets
      // (data, meta) for that room.
      const sock = client(s.url, { cookie: 'sid=user-rr2', transports: WS, autoConnect: false });
      const t = timeline(sock);
      await connected(sock);
      const acked = ask(sock, 'subscribe', { room: 'team:rr2', offset: from }).then((ack) => {
        t.mark('ack');
        return ack;
      });
      // Published while the subscribe is under way: each in the replay or live, never both.
      const base = round === 1 ? 7 : 11;
      const start = round === 1 ? 1 : 5;
      const live = (async () => {
        for (let n = base; n < base + 4; n++) await toRoom('team:rr2', { n });
      })();
      assert.deepEqual(await acked, { ok: true });
      await live;
      const want = Array.from({ length: base + 4 - start }, (_, i) => i + start);
      await waitFor(() => t.of('team').length >= want.length, { message: `${want.length} team messages`, timeout: 5000 });
      await sleep(300);
      const ns = t.of('team').map((i) => i.data.n);
      assert.deepEqual(ns, want, `round ${round}: once, in order`);
      const ackAt = t.items.findIndex((i) => i.event === '@ack');
      const beforeAck = t.items.slice(0, ackAt).filter((i) => i.event === 'team').map((i) => i.data.n);
      assert.deepEqual(beforeAck.slice(0, base - start), want.slice(0, base - start), 'the replay comes before the ack');
      if (round === 1) first4 = t.of('team').find((i) => i.data.n === 4).meta.offset;
      from = first4;
      for (const i of t.of('team')) {
        assert.equal(i.meta?.room, 'team:rr2');
        assert.equal(typeof i.meta?.offset, 'string');
      }
      assert.equal(t.of('recovery_failed').length, 0);
      closeAll([sock]);
      await gone(s, 'rr2');
    }

    // Without an offset: live only, as before.
    const plain = client(s.url, { cookie: 'sid=user-rr2', transports: WS, autoConnect: false });
    const p = recorder(plain);
    await connected(plain);
    assert.deepEqual(await ask(plain, 'subscribe', { room: 'team:rr2' }), { ok: true });
    await toRoom('team:rr2', { n: 99 });
    await p.waitCount(1);
    await sleep(200);
    assert.deepEqual(p.of('team'), [{ n: 99 }], 'no replay without an offset');
    assert.equal(p.metas[0], undefined, 'and one argument for a plain socket');
    closeAll([plain]);
  });

  test('an offset that is too old or unknown → recovery_failed {reason, room}, nothing partial, then live', async () => {
    await s.control({ sessionExtra: { rr3: { rooms: ['team:rr3'] } }, allowed: { rr3: ['team:rr3b'] } });
    const { socket, state } = roomClient(s.url, 'sid=user-rr3');
    const rec = recorder(socket);
    await connected(socket);
    await toRoom('team:rr3', { n: 0 });
    await rec.waitCount(1);
    socket.disconnect();
    await gone(s, 'rr3');
    for (let n = 1; n <= 20; n++) await toRoom('team:rr3', { n }); // max_messages is 10
    await connected(socket);
    const failed = await rec.waitFor((e) => e.event === 'recovery_failed', 'recovery_failed');
    assert.equal(failed.args[0].room, 'team:rr3');
    assert.equal(typeof failed.args[0].reason, 'string');
    assert.deepEqual(rec.of('team'), [{ n: 0 }], 'nothing partial is replayed after a gap');
    await toRoom('team:rr3', { n: 21 });
    await rec.waitFor((e) => e.event === 'team' && e.args[0].n === 21, 'live message after the gap');
    assert.ok(state.offsets['team:rr3']);

    // subscribe with an unknown offset: recovery_failed for that room, then joined live.
    const t = timeline(socket);
    await toRoom('team:rr3b', { n: 0 });
    assert.deepEqual(await ask(socket, 'subscribe', { room: 'team:rr3b', offset: 'nope-1' }), { ok: true });
    const rf = t.of('recovery_failed');
    assert.equal(rf.length, 1, 'recovery_failed before the ack');
    assert.equal(rf[0].data.room, 'team:rr3b');
    await toRoom('team:rr3b', { n: 1 });
    await waitFor(() => t.of('team').some((i) => i.data.n === 1 && i.meta?.room === 'team:rr3b'), { message: 'live on team:rr3b' });
    assert.deepEqual(t.of('team').filter((i) => i.meta?.room === 'team:rr3b').map((i) => i.data.n), [1]);
    // A malformed offset is refused before the app is asked.
    assert.deepEqual(await ask(socket, 'subscribe', { room: 'team:rr3c', offset: 7 }), { ok: false, error: 'invalid offset' });
    closeAll([socket]);
  });

  test('offsets claimed for rooms the socket is not in replay nothing (no history leaks to a non-member)', async () => {
    await s.control({ sessionExtra: { rr4b: { rooms: ['team:secret'] }, rr4m: { rooms: ['team:rr4m'] } } });
    // bob is in team:secret and gets its messages with offsets.
    const bob = roomClient(s.url, 'sid=user-rr4b');
    const bobSeen = recorder(bob.socket);
    await connected(bob.socket);
    await toRoom('team:secret', { secret: 0 });
    await s.publish({ userId: 'rr4b', data: { secret: 'u0' } });
    await bobSeen.waitCount(2);
    const secretOffset = bob.state.offsets['team:secret'];
    const bobUserOffset = bob.state.offset;
    bob.socket.disconnect();
    await gone(s, 'rr4b');
    for (let n = 1; n <= 3; n++) await toRoom('team:secret', { secret: n });
    await s.publish({ userId: 'rr4b', data: { secret: 'u1' } });

    // mallory claims bob's offsets: for the room she is not in, bob's user room, an internal one.
    const mallory = client(s.url, {
      cookie: 'sid=user-rr4m',
      transports: WS,
      autoConnect: false,
      auth: {
        offsets: {
          'team:secret': secretOffset,
          'user:rr4b': bobUserOffset,
          'sockgate:recovery:rr4b': bobUserOffset,
          'team:rr4m': secretOffset,
        },
      },
    });
    const m = timeline(mallory);
    await connected(mallory);
    // Nor through subscribe: the app refuses her, so nothing is replayed.
    assert.deepEqual(await ask(mallory, 'subscribe', { room: 'team:secret', offset: secretOffset }), { ok: false, error: 'forbidden' });
    await sleep(400);
    const leaked = m.items.filter((i) => JSON.stringify(i.data ?? '').includes('secret') || i.meta?.room === 'team:secret' || i.meta?.room === 'user:rr4b');
    assert.deepEqual(leaked, [], 'mallory got nothing of team:secret or of bob\'s user room');
    // Her own room's entry, with an offset of another room's, is replayed from that place in
    // the run's numbering at most, never with another room's messages.
    assert.ok(m.items.every((i) => i.event === 'recovery_failed' || i.meta?.room === 'team:rr4m'), JSON.stringify(m.items));

    // The control: bob with the same offsets gets what he missed.
    await connected(bob.socket);
    await bobSeen.waitCount(6, 'bob replayed 3 team and 1 user messages');
    assert.deepEqual(bobSeen.of('team').map((d) => d.secret), [0, 1, 2, 3]);
    assert.deepEqual(bobSeen.of('notification').map((d) => d.secret), ['u0', 'u1']);
    closeAll([mallory, bob.socket]);
  });

  test('auth.offsets is bounded: entries past channels.max_rooms_per_socket and overlong offsets are not replayed (logged, recovery_failed), the socket works', async () => {
    await s.control({ sessionExtra: { rr5: { rooms: ['team:rr5', 'team:rr5b'] } } });
    const { socket, state } = roomClient(s.url, 'sid=user-rr5');
    const rec = recorder(socket);
    await connected(socket);
    await toRoom('team:rr5', { n: 0 });
    await toRoom('team:rr5b', { n: 0 });
    await rec.waitCount(2);
    const o5 = state.offsets['team:rr5'];
    const o5b = state.offsets['team:rr5b'];
    closeAll([socket]);
    await gone(s, 'rr5');
    await toRoom('team:rr5', { n: 1 });
    await toRoom('team:rr5b', { n: 1 });

    // 300 junk entries before the room's (the map keeps the client's order; max is 4).
    const offsets = {};
    for (let i = 0; i < 300; i++) offsets[`team:junk${i}`] = 'x'.repeat(20);
    offsets['team:rr5'] = o5;
    offsets['team:rr5b'] = 'y'.repeat(2000);
    const flood = client(s.url, { cookie: 'sid=user-rr5', transports: WS, autoConnect: false, auth: { offsets } });
    const t = timeline(flood);
    await connected(flood);
    await waitFor(() => t.of('recovery_failed').length >= 2, { message: 'recovery_failed for both rooms' });
    assert.deepEqual(t.of('recovery_failed').map((i) => i.data.room).sort(), ['team:rr5', 'team:rr5b']);
    assert.deepEqual(t.of('team'), [], 'nothing replayed');
    await toRoom('team:rr5', { n: 2 });
    await waitFor(() => t.of('team').length === 1, { message: 'live after' });
    assert.ok(flood.connected);
    await waitFor(() => /auth\.offsets/.test(s.sockgate.text()), { message: 'a log line about auth.offsets' });
    closeAll([flood]);
    await gone(s, 'rr5');

    // Not an object: ignored, the socket connects and gets live messages.
    const odd = client(s.url, { cookie: 'sid=user-rr5', transports: WS, autoConnect: false, auth: { offsets: ['team:rr5', o5] } });
    const o = recorder(odd);
    await connected(odd);
    await toRoom('team:rr5', { n: 3 });
    await o.waitCount(1);
    assert.deepEqual(o.of('team'), [{ n: 3 }]);
    closeAll([odd]);
    await gone(s, 'rr5');

    // The control: within the bounds, both rooms are replayed.
    const ok = client(s.url, { cookie: 'sid=user-rr5', transports: WS, autoConnect: false, auth: { offsets: { 'team:rr5': o5, 'team:rr5b': o5b } } });
    const k = recorder(ok);
    await connected(ok);
    await k.waitCount(4, 'replayed 3 of team:rr5 and 1 of team:rr5b');
    await sleep(200);
    const byRoom = (room) => k.events.filter((_, i) => k.metas[i]?.room === room).map((e) => e.args[0].n);
    assert.deepEqual(byRoom('team:rr5'), [1, 2, 3]);
    assert.deepEqual(byRoom('team:rr5b'), [1]);
    closeAll([ok]);
  });
});

describe('room recovery across two cluster instances', { skip: findRedisServer() ? false : 'redis-server is not on PATH' }, () => {
  let redis;
  let fixture;
  let A;
  let B;
  before(async () => {
    redis = await startRedis(await freePort());
    fixture = await startFixture();
    const env = {
      SIDECAR_CLUSTER__REDIS_URL: redis.url,
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
    };
    [A, B] = await Promise.all([
      startSockgate({ upstreamUrl: fixture.url, env }),
      startSockgate({ upstreamUrl: fixture.url, env }),
    ]);
    await fetch(`${fixture.url}/__control`, {
      method: 'POST',
      body: JSON.stringify({
        sessionExtra: { cr1: { rooms: ['team:cr1'] } },
        allowed: { cr2: ['team:cr2'], cr3: ['team:cr2'] },
      }),
    });
    // Both instances relay kept messages (the listener count is taken every second).
    await waitFor(() => /every instance relays kept messages/.test(A.proc.text()) && /every instance relays kept messages/.test(B.proc.text()), {
      message: 'the relay on',
      timeout: 8000,
    });
  });
  after(async () => {
    await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
    await fixture?.stop().catch(() => {});
    redis?.kill('SIGKILL');
  });

  test('a team room is recovered from Redis when the client comes back through the other instance; live ones after, once each', async () => {
    const { socket, state } = roomClient(A.url, 'sid=user-cr1');
    const rec = recorder(socket);
    await connected(socket);
    await publishOk(A.publishSocket, { room: 'team:cr1', event: 'team', data: { n: 0 } });
    await rec.waitCount(1);
    assert.equal(rec.metas[0].room, 'team:cr1');
    socket.disconnect();
    for (let n = 1; n <= 15; n++) await publishOk(A.publishSocket, { room: 'team:cr1', event: 'team', data: { n } });

    // The load balancer sends the reconnect to B; A keeps publishing meanwhile.
    const { socket: again } = roomClient(B.url, 'sid=user-cr1');
    const offsets = { ...state.offsets };
    again.auth = (cb) => cb({ offset: null, offsets });
    const rec2 = recorder(again);
    const live = (async () => {
      await new Promise((resolve) => again.once('connect', resolve));
      for (let n = 16; n <= 25; n++) await publishOk(A.publishSocket, { room: 'team:cr1', event: 'team', data: { n } });
    })();
    again.connect();
    await live;
    await rec2.waitCount(25, '15 replayed and 10 live');
    await sleep(400);
    assert.deepEqual(rec2.of('team').map((d) => d.n), Array.from({ length: 25 }, (_, i) => i + 1), 'once, in order');
    assert.ok(rec2.metas.every((m) => m.room === 'team:cr1'));
    closeAll([socket, again]);
  });

  test('subscribe with an offset through B replays what A published, then live from both, once each', async () => {
    const watcher = client(A.url, { cookie: 'sid=user-cr3', transports: WS, autoConnect: false, auth: { offsets: {} } });
    const w = recorder(watcher);
    await connected(watcher);
    assert.deepEqual(await ask(watcher, 'subscribe', { room: 'team:cr2' }), { ok: true });
    await publishOk(A.publishSocket, { room: 'team:cr2', event: 'team', data: { n: 0 } });
    await w.waitCount(1);
    const offset = w.metas[0].offset;
    for (let n = 1; n <= 10; n++) await publishOk(A.publishSocket, { room: 'team:cr2', event: 'team', data: { n } });

    const sock = client(B.url, { cookie: 'sid=user-cr2', transports: WS, autoConnect: false, auth: { offsets: {} } });
    const t = timeline(sock);
    await connected(sock);
    const acked = ask(sock, 'subscribe', { room: 'team:cr2', offset }).then((ack) => {
      t.mark('ack');
      return ack;
    });
    const live = (async () => {
      for (let n = 11; n <= 20; n++) {
        const via = n % 2 ? A : B;
        await publishOk(via.publishSocket, { room: 'team:cr2', event: 'team', data: { n } });
      }
    })();
    assert.deepEqual(await acked, { ok: true });
    await live;
    await waitFor(() => t.of('team').length >= 20, { message: '20 team messages on B', timeout: 8000 });
    await sleep(400);
    assert.deepEqual(t.of('team').map((i) => i.data.n), Array.from({ length: 20 }, (_, i) => i + 1), 'once, in order');
    const ackAt = t.items.findIndex((i) => i.event === '@ack');
    assert.deepEqual(t.items.slice(0, ackAt).filter((i) => i.event === 'team').map((i) => i.data.n).slice(0, 10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await w.waitCount(21, 'the watcher on A got every one too');
    assert.deepEqual(w.of('team').map((d) => d.n), Array.from({ length: 21 }, (_, i) => i));
    closeAll([watcher, sock]);
  });

  test('while a sockgate that relays user rooms only is connected, channels go through the adapter and still arrive, with offsets', async () => {
    // As Redis sees such an instance: it listens on the adapter's request channel and on
    // sockgate:relay, not on sockgate:relay:rooms (its relay would drop a channel's entries).
    const { spawn } = await import('node:child_process');
    const older = spawn('redis-cli', ['-p', String(redis.port), 'SSUBSCRIBE', 'socket.io-request#/#', 'sockgate:relay'], { stdio: 'ignore' });
    after(() => older.kill());
    await waitFor(() => /does not relay channels is connected/.test(A.proc.text()), { message: 'A notices it', timeout: 5000 });
    const sock = client(B.url, { cookie: 'sid=user-cr3', transports: WS, autoConnect: false, auth: { offsets: {} } });
    const rec = recorder(sock);
    await connected(sock);
    assert.deepEqual(await ask(sock, 'subscribe', { room: 'team:cr2' }), { ok: true });
    await publishOk(A.publishSocket, { room: 'team:cr2', event: 'team', data: 'through the adapter' });
    await rec.waitFor((e) => e.args[0] === 'through the adapter', 'the message on B', 5000);
    assert.match(rec.metas[0]?.offset ?? '', /:/, 'with its offset');
    assert.equal(rec.metas[0].room, 'team:cr2');
    older.kill();
    await sleep(2500); // counted again: every instance relays channels
    await publishOk(A.publishSocket, { room: 'team:cr2', event: 'team', data: 'relayed' });
    await rec.waitFor((e) => e.args[0] === 'relayed', 'the relayed message on B', 5000);
    await sleep(200);
    assert.deepEqual(rec.of('team'), ['through the adapter', 'relayed'], 'each once');
    closeAll([sock]);
  });
});

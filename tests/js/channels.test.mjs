// Channels beyond the user room: rooms from the session route, subscribe/unsubscribe authorized
// by the app's route, presence rooms (join/leave/grace/list), single instance and cluster.
//   cargo build --bins && node --test tests/js/channels.test.mjs   (cluster cases need redis-server)
//
// The fixture app (tests/fixture/app.mjs) adds `sessionExtra[userId]` to its session answers
// and allows `allowed[userId]` on its authorize route (which checks the cookie itself).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFixture,
  startSockgate,
  startStack,
  freePort,
  client,
  connect,
  recorder,
  waitFor,
  sleep,
  closeAll,
  publishApi,
} from './harness.mjs';
import { findRedisServer, startRedis } from './cluster-helpers.mjs';

const GRACE_MS = 600;
const WS = { transports: ['websocket'] };

const ask = (socket, event, payload, timeout = 4000) => socket.timeout(timeout).emitWithAck(event, payload);
const subscribe = (socket, room) => ask(socket, 'subscribe', { room });

describe('channels on one instance', () => {
  let s;
  before(async () => {
    s = await startStack({
      env: {
        SIDECAR_AUTH__REVALIDATE_INTERVAL_MS: '400',
        SIDECAR_AUTH__CACHE_TTL_MS: '150',
        SIDECAR_AUTH__TIMEOUT_MS: '800',
        SIDECAR_CHANNELS__MAX_ROOMS_PER_SOCKET: '3',
        SIDECAR_CHANNELS__MAX_SUBSCRIBES_PER_SEC: '4',
        SIDECAR_CHANNELS__PUBLIC_PREFIXES: '["public:"]',
        SIDECAR_CHANNELS__PRESENCE_GRACE_MS: String(GRACE_MS),
        SIDECAR_CHANNELS__MAX_PRESENCE_MEMBERS: '2',
      },
    });
  });
  after(() => s?.stop());

  /** Publishes `data` to `room`; returns the recipients count. */
  async function toRoom(room, data) {
    return (await s.publish({ room, event: 'team', data })).recipients;
  }

  test('rooms from the session route are joined at connect; invalid ones are skipped', async () => {
    await s.control({
      sessionExtra: { r1: { rooms: ['team:1', 'bad room', 'user:bob', 'sockgate:connecting:bob', 7, 'team:2', 'team:1'] } },
    });
    const sock = await connect(s.url, { cookie: 'sid=user-r1' });
    const seen = recorder(sock);
    try {
      assert.equal(await toRoom('team:1', { n: 1 }), 1);
      assert.equal(await toRoom('team:2', { n: 2 }), 1);
      await seen.waitCount(2);
      assert.deepEqual(seen.of('team'), [{ n: 1 }, { n: 2 }]);
      // Not spoofed into bob's user room nor an internal one.
      assert.equal((await s.publish({ userId: 'bob', event: 'x', data: 1 })).recipients, 0);
      const user = await s.publishApi('GET', '/users/r1');
      assert.deepEqual(user.json.rooms, ['team:1', 'team:2']);
    } finally {
      closeAll([sock]);
    }
  });

  test('revalidation joins rooms the session gained and leaves those it lost', async () => {
    await s.control({ sessionExtra: { r2: { rooms: ['team:a', 'team:b'] } } });
    const sock = await connect(s.url, { cookie: 'sid=user-r2' });
    try {
      await s.control({ sessionExtra: { r2: { rooms: ['team:b', 'team:c'] } } });
      await waitFor(async () => (await s.publishApi('GET', '/users/r2')).json.rooms.join() === 'team:b,team:c', {
        timeout: 4000,
        message: 'membership follows the session',
      });
      assert.equal(await toRoom('team:a', 1), 0, 'left team:a');
      assert.equal(await toRoom('team:c', 1), 1, 'joined team:c');
      assert.ok(sock.connected, 'same socket, not reconnected');
    } finally {
      closeAll([sock]);
    }
  });

  test('subscribe: allowed by the app → joined; forbidden → not; the route gets the cookie and {room,userId}', async () => {
    await s.control({ allowed: { s1: ['team:9'] } });
    const sock = await connect(s.url, { cookie: 'sid=user-s1' });
    try {
      assert.deepEqual(await subscribe(sock, 'team:9'), { ok: true });
      assert.deepEqual(await subscribe(sock, 'team:10'), { ok: false, error: 'forbidden' });
      assert.equal(await toRoom('team:9', 1), 1);
      assert.equal(await toRoom('team:10', 1), 0);
      const calls = (await s.fixtureStats()).authorizeCalls.filter((c) => c.userId === 's1');
      assert.deepEqual(calls.map((c) => [c.room, c.cookie]), [['team:9', 'sid=user-s1'], ['team:10', 'sid=user-s1']]);
      assert.deepEqual(await ask(sock, 'unsubscribe', { room: 'team:9' }), { ok: true });
      assert.equal(await toRoom('team:9', 1), 0, 'unsubscribe left');
    } finally {
      closeAll([sock]);
    }
  });

  test('subscribe while the app fails or is slow: acked with an error, nothing joined', async () => {
    await s.control({ allowed: { s2: ['team:x'] } });
    const sock = await connect(s.url, { cookie: 'sid=user-s2' });
    try {
      await s.control({ authorizeStatus: 500 });
      assert.deepEqual(await subscribe(sock, 'team:x'), { ok: false, error: 'unavailable' });
      await s.control({ authorizeStatus: 0, authorizeDelayMs: 2000 });
      const t0 = Date.now();
      assert.deepEqual(await subscribe(sock, 'team:x'), { ok: false, error: 'unavailable' });
      assert.ok(Date.now() - t0 < 1800, 'answered at auth.timeout_ms, not when the app is done');
      await sleep(1500); // the slow answer arrives (allowed) and must not join the room
      assert.equal(await toRoom('team:x', 1), 0);
    } finally {
      await s.control({ authorizeDelayMs: 0 });
      closeAll([sock]);
    }
  });

  test('invalid names, user rooms and internal rooms are refused; the own user room cannot be left', async () => {
    const sock = await connect(s.url, { cookie: 'sid=user-s3' });
    try {
      for (const room of ['user:s3', 'user:other', 'sockgate:connecting:other', '', 'a b', 'x'.repeat(129)]) {
        assert.deepEqual(await subscribe(sock, room), { ok: false, error: 'invalid room' }, JSON.stringify(room));
      }
      assert.deepEqual(await ask(sock, 'subscribe', 'team:1'), { ok: false, error: 'invalid room' });
      assert.deepEqual(await ask(sock, 'unsubscribe', { room: 'user:s3' }), { ok: false, error: 'invalid room' });
      assert.equal((await s.publish({ userId: 's3', event: 'x', data: 1 })).recipients, 1);
      const calls = (await s.fixtureStats()).authorizeCalls.filter((c) => c.userId === 's3');
      assert.equal(calls.length, 0, 'the app was not asked about invalid names');
    } finally {
      closeAll([sock]);
    }
  });

  test('limits: rooms per socket and subscribes per second', async () => {
    await s.control({ allowed: { s4: ['t:1', 't:2', 't:3', 't:4'] } });
    const sock = await connect(s.url, { cookie: 'sid=user-s4' });
    try {
      const replies = [];
      for (const room of ['t:1', 't:2', 't:3', 't:4']) replies.push(await subscribe(sock, room));
      assert.deepEqual(replies.slice(0, 3), [{ ok: true }, { ok: true }, { ok: true }]);
      assert.deepEqual(replies[3], { ok: false, error: 'too many rooms' });
      // The bucket (4 per second) is empty now.
      assert.deepEqual(await subscribe(sock, 't:1'), { ok: false, error: 'rate limited' });
      await sleep(600);
      assert.deepEqual(await subscribe(sock, 't:1'), { ok: true }, 'refilled');
    } finally {
      closeAll([sock]);
    }
  });

  test('presence lists are rate limited like subscribes (each is a Redis read in cluster mode)', async () => {
    const sock = await connect(s.url, { cookie: 'sid=user-s6' });
    try {
      assert.deepEqual(await subscribe(sock, 'public:p'), { ok: true });
      const replies = [];
      for (let i = 0; i < 4; i += 1) replies.push(await ask(sock, 'presence', { room: 'public:p' }));
      assert.deepEqual(replies.slice(0, 3).map((r) => r.error), ['not subscribed', 'not subscribed', 'not subscribed']);
      assert.deepEqual(replies[3], { ok: false, error: 'rate limited' });
    } finally {
      closeAll([sock]);
    }
  });

  test('public prefixes need no authorization', async () => {
    const sock = await connect(s.url, { cookie: 'sid=user-s5' });
    try {
      assert.deepEqual(await subscribe(sock, 'public:news'), { ok: true });
      assert.equal(await toRoom('public:news', 1), 1);
      const calls = (await s.fixtureStats()).authorizeCalls.filter((c) => c.userId === 's5');
      assert.equal(calls.length, 0);
    } finally {
      closeAll([sock]);
    }
  });

  test('a subscribe sent the moment the socket connects is answered (its handler is there before CONNECT)', async () => {
    // socket.io-client sends what was emitted before `connect` right after the CONNECT packet
    // arrives: the server must already listen for it then, or the event is dropped unanswered.
    for (let round = 0; round < 20; round++) {
      const socks = Array.from({ length: 40 }, (_, i) => client(s.url, { cookie: `sid=user-early${round}x${i}`, ...WS }));
      try {
        const acks = await Promise.allSettled(socks.map((sock) => subscribe(sock, 'public:early')));
        const missed = acks.filter((a) => a.status !== 'fulfilled').map((a) => a.reason.message);
        assert.deepEqual(missed, [], `round ${round}: subscribes left unanswered`);
        assert.ok(acks.every((a) => a.value.ok === true), JSON.stringify(acks.map((a) => a.value)));
      } finally {
        closeAll(socks);
      }
    }
  });

  test('presence: one join per user however many tabs, a list with user info, a leave after the last tab and the grace', async () => {
    const room = 'presence:doc-7';
    await s.control({
      allowed: { p1: [room], p2: [room] },
      sessionExtra: { p1: { user: { name: 'Alice' } }, p2: { user: { name: 'Bob' } } },
    });
    const bob = await connect(s.url, { cookie: 'sid=user-p2', ...WS });
    const heard = recorder(bob);
    const tabs = [await connect(s.url, { cookie: 'sid=user-p1', ...WS }), await connect(s.url, { cookie: 'sid=user-p1', ...WS })];
    try {
      assert.deepEqual(await subscribe(bob, room), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'p2', 'bob sees his own join');
      for (const tab of tabs) assert.deepEqual(await subscribe(tab, room), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'p1', 'alice joins');
      assert.deepEqual(
        heard.of('presence:join').find((j) => j.user.id === 'p1'),
        { room, user: { id: 'p1', info: { name: 'Alice' } } },
      );
      const list = await ask(bob, 'presence', { room });
      assert.deepEqual(list, {
        ok: true,
        members: [
          { id: 'p1', info: { name: 'Alice' } },
          { id: 'p2', info: { name: 'Bob' } },
        ],
      });
      const info = await s.publishApi('GET', `/rooms/${encodeURIComponent(room)}`);
      assert.deepEqual(
        { ...info.json, members: info.json.members.map((m) => m.id) },
        { room, sockets: 3, users: 2, members: ['p1', 'p2'], scope: 'local' },
      );
      tabs[0].close();
      await sleep(GRACE_MS + 400);
      assert.equal(heard.of('presence:leave').length, 0, 'alice still has a tab');
      // A reload of the last tab within the grace: neither a leave nor a second join.
      tabs[1].close();
      await sleep(100);
      const reloaded = await connect(s.url, { cookie: 'sid=user-p1', ...WS });
      tabs.push(reloaded);
      assert.deepEqual(await subscribe(reloaded, room), { ok: true });
      await sleep(GRACE_MS + 400);
      assert.equal(heard.of('presence:leave').length, 0, 'a reload is not a leave');
      assert.equal(heard.of('presence:join').filter((j) => j.user.id === 'p1').length, 1, 'nor a join');
      reloaded.close();
      const left = Date.now();
      await heard.waitFor((e) => e.event === 'presence:leave', 'alice leaves');
      assert.ok(Date.now() - left >= GRACE_MS - 50, 'after the grace');
      assert.deepEqual(heard.of('presence:leave'), [{ room, userId: 'p1' }]);
      assert.deepEqual((await ask(bob, 'presence', { room })).members.map((m) => m.id), ['p2']);
    } finally {
      closeAll([bob, ...tabs]);
    }
  });

  test('a presence room is capped at channels.max_presence_members distinct users; a member\'s next tab still gets in', async () => {
    const room = 'presence:capped';
    await s.control({ allowed: { f1: [room], f2: [room], f3: [room] } });
    const f1 = await connect(s.url, { cookie: 'sid=user-f1', ...WS });
    const heard = recorder(f1);
    const f2 = await connect(s.url, { cookie: 'sid=user-f2', ...WS });
    const others = [];
    try {
      for (const sock of [f1, f2]) assert.deepEqual(await subscribe(sock, room), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'f2', 'f2 joins');
      others.push(await connect(s.url, { cookie: 'sid=user-f1', ...WS }));
      assert.deepEqual(await subscribe(others[0], room), { ok: true }, "a member's second tab");
      others.push(await connect(s.url, { cookie: 'sid=user-f3', ...WS }));
      assert.deepEqual(await subscribe(others[1], room), { ok: false, error: 'room full' });
      const asked = (await s.fixtureStats()).authorizeCalls.filter((c) => c.userId === 'f3');
      assert.equal(asked.length, 0, 'the app is not asked about a full room');
      assert.equal(heard.of('presence:join').filter((j) => j.user.id === 'f3').length, 0);
      f2.close();
      await heard.waitFor((e) => e.event === 'presence:leave' && e.args[0].userId === 'f2', 'f2 leaves', 4000);
      assert.deepEqual(await subscribe(others[1], room), { ok: true }, 'a place is free again');
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'f3', 'f3 joins');
    } finally {
      closeAll([f1, f2, ...others]);
    }
  });

  test('user info over 1 KiB is left out of presence (null), up to it is shown', async () => {
    const room = 'presence:info';
    const fits = { name: 'x'.repeat(1000) }; // 1,011 bytes of JSON
    const over = { name: 'y'.repeat(1100) };
    await s.control({
      allowed: { i1: [room], i2: [room] },
      sessionExtra: { i1: { user: fits }, i2: { user: over } },
    });
    const small = await connect(s.url, { cookie: 'sid=user-i1', ...WS });
    const heard = recorder(small);
    const big = await connect(s.url, { cookie: 'sid=user-i2', ...WS });
    try {
      for (const sock of [small, big]) assert.deepEqual(await subscribe(sock, room), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'i2', 'i2 joins');
      assert.deepEqual(heard.of('presence:join').map((j) => j.user), [
        { id: 'i1', info: fits },
        { id: 'i2', info: null },
      ]);
      assert.deepEqual((await ask(small, 'presence', { room })).members, [
        { id: 'i1', info: fits },
        { id: 'i2', info: null },
      ]);
    } finally {
      closeAll([small, big]);
    }
  });

  test('presence of a room the socket is not in is refused; a non-presence room has no member list', async () => {
    await s.control({ allowed: { p3: ['team:q'] } });
    const sock = await connect(s.url, { cookie: 'sid=user-p3' });
    try {
      assert.deepEqual(await ask(sock, 'presence', { room: 'presence:doc-7' }), { ok: false, error: 'not subscribed' });
      assert.deepEqual(await subscribe(sock, 'team:q'), { ok: true });
      assert.deepEqual(await ask(sock, 'presence', { room: 'team:q' }), { ok: false, error: 'not subscribed' });
      const info = await s.publishApi('GET', '/rooms/team:q');
      assert.deepEqual(info.json, { room: 'team:q', sockets: 1, users: 1, scope: 'local' });
    } finally {
      closeAll([sock]);
    }
  });

  test('a closed socket leaves its presence rooms even when it joined them from the session', async () => {
    const room = 'presence:s-room';
    await s.control({ sessionExtra: { p4: { rooms: [room] }, p5: { rooms: [room] } } });
    const watcher = await connect(s.url, { cookie: 'sid=user-p5', ...WS });
    const heard = recorder(watcher);
    const sock = await connect(s.url, { cookie: 'sid=user-p4', ...WS });
    try {
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'p4', 'p4 joins from its session');
      sock.close();
      await heard.waitFor((e) => e.event === 'presence:leave' && e.args[0].userId === 'p4', 'p4 leaves', 4000);
    } finally {
      closeAll([watcher, sock]);
    }
  });
});

describe('channels and presence across two cluster instances', { skip: findRedisServer() ? false : 'redis-server is not on PATH' }, () => {
  let redis;
  let fixture;
  let A;
  let B;
  const room = 'presence:team-1';

  before(async () => {
    redis = await startRedis(await freePort());
    fixture = await startFixture();
    const env = {
      SIDECAR_CLUSTER__REDIS_URL: redis.url,
      SIDECAR_REALTIME__TRANSPORTS: '["websocket"]',
      SIDECAR_CHANNELS__PRESENCE_GRACE_MS: String(GRACE_MS),
      SIDECAR_CHANNELS__PRESENCE_INSTANCE_TTL_MS: '1500',
      SIDECAR_CHANNELS__MAX_PRESENCE_MEMBERS: '2',
    };
    [A, B] = await Promise.all([
      startSockgate({ upstreamUrl: fixture.url, env }),
      startSockgate({ upstreamUrl: fixture.url, env }),
    ]);
    const users = ['c1', 'c2', 'c3'];
    await fetch(`${fixture.url}/__control`, {
      method: 'POST',
      body: JSON.stringify({
        allowed: Object.fromEntries(users.map((u) => [u, [room, 'team:x', 'presence:cap']])),
        sessionExtra: Object.fromEntries(users.map((u) => [u, { user: { name: u.toUpperCase() } }])),
      }),
    });
  });

  after(async () => {
    await Promise.all([A?.stop(), B?.stop()].filter(Boolean)).catch(() => {});
    await fixture?.stop().catch(() => {});
    redis?.kill('SIGKILL');
  });

  test('a room publish on A reaches subscribers on both instances', async () => {
    const onA = await connect(A.url, { cookie: 'sid=user-c1', ...WS });
    const onB = await connect(B.url, { cookie: 'sid=user-c2', ...WS });
    try {
      for (const s of [onA, onB]) assert.deepEqual(await subscribe(s, 'team:x'), { ok: true });
      const got = [recorder(onA), recorder(onB)];
      const r = await publishApi(A.publishSocket, 'POST', '/publish', { room: 'team:x', event: 'team', data: { n: 1 } });
      assert.equal(r.status, 200, r.text);
      for (const g of got) await g.waitFor((e) => e.event === 'team', 'room message on both');
      const info = await publishApi(B.publishSocket, 'GET', '/rooms/team:x');
      assert.deepEqual(info.json, { room: 'team:x', sockets: 2, users: 2, scope: 'cluster' });
    } finally {
      closeAll([onA, onB]);
    }
  });

  test('a user with tabs on A and B joins once; the list is the same from either instance; one leave', async () => {
    const watcher = await connect(B.url, { cookie: 'sid=user-c2', ...WS });
    const heard = recorder(watcher);
    const tabs = [await connect(A.url, { cookie: 'sid=user-c1', ...WS }), await connect(B.url, { cookie: 'sid=user-c1', ...WS })];
    try {
      assert.deepEqual(await subscribe(watcher, room), { ok: true });
      await Promise.all(tabs.map(async (t) => assert.deepEqual(await subscribe(t, room), { ok: true })));
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'c1', 'c1 joins');
      await sleep(300);
      assert.equal(heard.of('presence:join').filter((j) => j.user.id === 'c1').length, 1, 'one join for two tabs on two instances');
      for (const [api, who] of [[A, 'A'], [B, 'B']]) {
        const info = await publishApi(api.publishSocket, 'GET', `/rooms/${room}`);
        assert.deepEqual(info.json.members, [
          { id: 'c1', info: { name: 'C1' } },
          { id: 'c2', info: { name: 'C2' } },
        ], `members seen from ${who}`);
        assert.equal(info.json.sockets, 3);
        assert.equal(info.json.users, 2);
      }
      tabs[0].close();
      await sleep(GRACE_MS + 400);
      assert.equal(heard.of('presence:leave').length, 0, 'still on B');
      tabs[1].close();
      await heard.waitFor((e) => e.event === 'presence:leave' && e.args[0].userId === 'c1', 'c1 leaves');
      await sleep(GRACE_MS + 300);
      assert.equal(heard.of('presence:leave').length, 1, 'one leave');
    } finally {
      closeAll([watcher, ...tabs]);
    }
  });

  test('the presence member cap counts the users of every instance', async () => {
    const cap = 'presence:cap';
    const c1 = await connect(A.url, { cookie: 'sid=user-c1', ...WS });
    const heard = recorder(c1);
    const c2 = await connect(B.url, { cookie: 'sid=user-c2', ...WS });
    const others = [];
    try {
      for (const sock of [c1, c2]) assert.deepEqual(await subscribe(sock, cap), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'c2', 'c2 (on B) joins');
      others.push(await connect(A.url, { cookie: 'sid=user-c3', ...WS }));
      assert.deepEqual(await subscribe(others[0], cap), { ok: false, error: 'room full' }, 'full, counted across A and B');
      others.push(await connect(B.url, { cookie: 'sid=user-c1', ...WS }));
      assert.deepEqual(await subscribe(others[1], cap), { ok: true }, "a member's tab on the other instance");
      c2.close();
      await heard.waitFor((e) => e.event === 'presence:leave' && e.args[0].userId === 'c2', 'c2 leaves', 4000);
      assert.deepEqual(await subscribe(others[0], cap), { ok: true }, 'a place is free again');
    } finally {
      closeAll([c1, c2, ...others]);
    }
  });

  test('an instance killed: its members leave within the bound', async () => {
    const watcher = await connect(B.url, { cookie: 'sid=user-c2', ...WS });
    const heard = recorder(watcher);
    const doomed = await connect(A.url, { cookie: 'sid=user-c3', ...WS });
    try {
      assert.deepEqual(await subscribe(watcher, room), { ok: true });
      assert.deepEqual(await subscribe(doomed, room), { ok: true });
      await heard.waitFor((e) => e.event === 'presence:join' && e.args[0].user.id === 'c3', 'c3 joins');
      const killedAt = Date.now();
      await A.stop('SIGKILL');
      doomed.close();
      // presence_instance_ttl_ms (1.5 s) + a third of it, plus delivery.
      await heard.waitFor((e) => e.event === 'presence:leave' && e.args[0].userId === 'c3', 'c3 leaves after A died', 5000);
      assert.ok(Date.now() - killedAt < 4000);
      const info = await publishApi(B.publishSocket, 'GET', `/rooms/${room}`);
      assert.deepEqual(info.json.members.map((m) => m.id), ['c2']);
    } finally {
      closeAll([watcher, doomed]);
    }
  });
});

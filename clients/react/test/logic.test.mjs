// The package's logic without a browser: offset ordering, what is kept (and, opt-in, kept in
// sessionStorage), the handshake refusal mapping, and the client's connection sharing.
// Runs on the compiled package (dist/, made by `npm run build` or `npm pack`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { createSockgate, isNewerOffset, MAX_ROOMS, Offsets, refusal } from '../dist/index.js';

/** A Web Storage stand-in that records writes (and can be told to refuse them). */
function memoryStorage(initial = {}) {
  const data = new Map(Object.entries(initial));
  return {
    data,
    writes: 0,
    refuse: false,
    getItem: (k) => (data.has(k) ? data.get(k) : null),
    setItem(k, v) {
      if (this.refuse) throw new Error('QuotaExceededError');
      this.writes++;
      data.set(k, String(v));
    },
  };
}

test('isNewerOffset: numeric order within a run, any other run or generation is newer', () => {
  assert.equal(isNewerOffset('r1-10', 'r1-9'), true, 'numbers, not strings: 10 > 9');
  assert.equal(isNewerOffset('r1-9', 'r1-10'), false);
  assert.equal(isNewerOffset('r1-5', 'r1-5'), false, 'the same offset is not newer');
  assert.equal(isNewerOffset('r2-1', 'r1-99'), true, 'a restarted sockgate: everything is news');
  assert.equal(isNewerOffset('r1-1', null), true);
  assert.equal(isNewerOffset('r1-1', undefined), true);
  // Cluster offsets: <generation>:<ms>-<seq>, compared field by field.
  assert.equal(isNewerOffset('g1:1700000000001-0', 'g1:1700000000000-7'), true);
  assert.equal(isNewerOffset('g1:1700000000000-8', 'g1:1700000000000-7'), true);
  assert.equal(isNewerOffset('g1:1700000000000-7', 'g1:1700000000000-8'), false);
  assert.equal(isNewerOffset('g2:1-0', 'g1:1700000000000-8'), true);
});

test('Offsets: keeps the newest per room, drops repeats, sends them in the handshake', () => {
  const o = new Offsets();
  assert.equal(o.see('user:alice', 'r1-2'), true);
  assert.equal(o.see('user:alice', 'r1-2'), false, 'a repeat is dropped');
  assert.equal(o.see('user:alice', 'r1-1'), true, 'an older message (replayed) is delivered…');
  assert.equal(o.get('user:alice'), 'r1-2', '…but does not move the offset back');
  assert.equal(o.see('', 'r1-7'), true);
  o.see('team:demo', 'r1-3');
  assert.deepEqual(o.auth(), { offset: 'r1-7', offsets: { 'user:alice': 'r1-2', 'team:demo': 'r1-3' } });
});

test(`Offsets: at most ${MAX_ROOMS} rooms, the one seen least recently dropped first`, () => {
  const o = new Offsets();
  for (let i = 0; i <= MAX_ROOMS; i++) o.see(`room:${i}`, 'r1-1');
  o.see('room:1', 'r1-2'); // room:1 is the most recent now
  o.see('room:extra', 'r1-1');
  const rooms = Object.keys(o.auth().offsets);
  assert.equal(rooms.length, MAX_ROOMS);
  assert.ok(!rooms.includes('room:0') && !rooms.includes('room:2'), 'the two oldest went');
  assert.ok(rooms.includes('room:1') && rooms.includes('room:extra'));
});

test('Offsets in storage (opt-in): written on each new offset, read back by the next page', () => {
  const storage = memoryStorage();
  const first = new Offsets(storage, 'k');
  first.see('user:alice', 'r1-4');
  first.see('', 'r1-4'); // an older sockgate's unnamed room is not kept across a reload
  first.see('user:alice', 'r1-4'); // a repeat writes nothing
  assert.equal(storage.writes, 1);
  assert.deepEqual(JSON.parse(storage.data.get('k')), { 'user:alice': 'r1-4' });

  const reloaded = new Offsets(storage, 'k');
  assert.equal(reloaded.get('user:alice'), 'r1-4');
  assert.deepEqual(reloaded.auth(), { offset: null, offsets: { 'user:alice': 'r1-4' } });
  assert.equal(new Offsets(storage, 'other').get('user:alice'), undefined, 'another key, another page');
});

test('Offsets in storage: unreadable or refusing storage is the same as none', () => {
  for (const bad of ['not json', '[1,2]', '{"user:a": 5}', 'null']) {
    const o = new Offsets(memoryStorage({ 'sockgate:offsets': bad }));
    assert.deepEqual(o.auth().offsets, {}, bad);
  }
  const storage = memoryStorage();
  storage.refuse = true;
  const o = new Offsets(storage);
  assert.equal(o.see('user:a', 'r1-1'), true);
  assert.equal(o.get('user:a'), 'r1-1', 'kept in memory');
});

test("refusal: the handshake's 401 / 503 become 'unauthorized' / 'unavailable'", () => {
  const err = (message, description) => Object.assign(new Error(message), { description });
  assert.equal(refusal(err('xhr poll error', 401)), 'unauthorized');
  assert.equal(refusal(err('xhr poll error', 503)), 'unavailable');
  // Node's websocket transport names the status in its error.
  assert.equal(refusal(err('websocket error', new Error('Unexpected server response: 401'))), 'unauthorized');
  assert.equal(refusal(err('websocket error', new Error('Unexpected server response: 503'))), 'unavailable');
  assert.equal(refusal(err('xhr poll error', 403)), 'xhr poll error', 'anything else: the message');
  assert.equal(refusal(err('timeout')), 'timeout');
});

// A client whose socket never dials out (autoConnect off): what is shared, what is not.
const offline = (more = {}) =>
  createSockgate({ url: 'http://127.0.0.1:9', socketOptions: { autoConnect: false, reconnection: false }, ...more });
const tick = () => new Promise((r) => setTimeout(r, 5));

test('a client shares one connection between holders and closes it after the last lets go', async () => {
  const client = offline();
  const a = client.acquire();
  const b = client.acquire();
  assert.equal(a.connection, b.connection, 'one connection per client');
  a.release();
  a.release(); // releasing twice counts once
  await tick();
  assert.equal(client.acquire().connection, b.connection, 'still held by b');
});

test("strict mode's unmount + mount in one go keeps the connection; a later mount gets a new one", async () => {
  const client = offline();
  const first = client.acquire();
  first.release(); // effect cleanup…
  const again = client.acquire(); // …and the effect again, synchronously
  assert.equal(again.connection, first.connection, 'no reconnect on the double mount');
  again.release();
  await tick();
  const later = client.acquire();
  assert.notEqual(later.connection, first.connection, 'closed once nobody held it');
  assert.equal(first.connection.socket.connected, false);
  later.release();
});

test('two clients (two providers, two tests) share nothing', async () => {
  const storage = memoryStorage();
  const one = offline({ persistOffsets: 'k', storage });
  const two = offline();
  const a = one.acquire();
  const b = two.acquire();
  assert.notEqual(a.connection, b.connection);
  a.release();
  b.release();
  await tick();
  assert.equal(storage.writes, 0, 'nothing stored without a message');
});

// The hooks under React itself (react-test-renderer: no DOM needed), with sockets that never
// dial out: strict mode's double mount opens one connection, providers share nothing, and a
// refused handshake maps to `error` without a retry storm.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createElement as h, StrictMode } from 'react';
import TestRenderer from 'react-test-renderer';

import {
  createSockgate,
  defaultClient,
  SockgateProvider,
  useChannel,
  usePresence,
  useSockgateClient,
  useSocket,
} from '../dist/index.js';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
// react-test-renderer says on every render that it is deprecated (for DOM tests); it still
// runs hooks and effects as React does, which is all these tests need, without a DOM.
const consoleError = console.error;
console.error = (...args) => {
  if (!String(args[0]).includes('react-test-renderer is deprecated')) consoleError(...args);
};
const { act } = TestRenderer;

const offline = (more = {}) =>
  createSockgate({ url: 'http://127.0.0.1:9', socketOptions: { autoConnect: false, reconnection: false }, ...more });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The connections a client handed out, in order (one per acquire). */
function watch(client) {
  const handed = [];
  const acquire = client.acquire.bind(client);
  client.acquire = () => {
    const held = acquire();
    handed.push(held.connection);
    return held;
  };
  return handed;
}

let lastSocket = null;
function Page({ userId = 'alice' }) {
  lastSocket = useSocket({ userId });
  useChannel('team:demo', { message() {} });
  usePresence('presence:team-demo');
  return null;
}

async function render(element) {
  let renderer;
  await act(async () => {
    // Concurrent, as createRoot renders: React 18 double-mounts under strict mode only there
    // (19's test renderer is always concurrent).
    renderer = TestRenderer.create(element, { unstable_isConcurrent: true });
  });
  return renderer;
}

test('strict mode: the double mount of every hook opens one connection, unmount closes it', async () => {
  const client = offline();
  const handed = watch(client);
  const r = await render(h(StrictMode, null, h(SockgateProvider, { client }, h(Page))));
  assert.ok(handed.length >= 6, `each hook mounted twice (${handed.length} acquires)`);
  assert.equal(new Set(handed).size, 1, 'one connection for all of them');
  const [connection] = handed;
  await act(async () => r.unmount());
  await sleep(10);
  assert.equal(connection.socket.active, false, 'closed once the last hook let go');
  client.acquire().release();
  assert.notEqual(handed.at(-1), connection, 'a later mount opens a new one');
});

test('a provider without a client has its own, kept across renders; two such providers share nothing', async () => {
  const clients = [];
  function Probe() {
    clients.push(useSockgateClient());
    useSocket({ userId: 'alice' });
    return null;
  }
  const options = { url: 'http://127.0.0.1:9', socketOptions: { autoConnect: false, reconnection: false } };
  const a = await render(h(SockgateProvider, { options }, h(Probe)));
  await act(async () => a.update(h(SockgateProvider, { options }, h(Probe))));
  assert.equal(clients.length, 2);
  assert.equal(clients[0], clients[1], 'the same client on every render');
  const b = await render(h(SockgateProvider, { options }, h(Probe)));
  assert.notEqual(clients[2], clients[0], 'another provider, another client');
  assert.notEqual(clients[0], defaultClient(), 'and not the default one');
  await act(async () => {
    a.unmount();
    b.unmount();
  });
});

test("a 401 at the handshake: error 'unauthorized' and no retry at all", async () => {
  const client = offline();
  const handed = watch(client);
  const r = await render(h(SockgateProvider, { client }, h(Page)));
  const { socket } = handed[0];
  let connects = 0;
  const connect = socket.connect.bind(socket);
  socket.connect = () => (connects++, connect());
  await act(async () => {
    socket.emitReserved('connect_error', Object.assign(new Error('xhr poll error'), { description: 401 }));
  });
  assert.equal(lastSocket.error, 'unauthorized');
  assert.equal(lastSocket.isConnected, false);
  await sleep(1200); // longer than the first backoff step (500 ms + jitter)
  assert.equal(connects, 0, 'nothing retried');
  assert.equal(socket.active, false, "and Socket.IO's own reconnection is off too");
  await act(async () => r.unmount());
});

test("a 503 at the handshake: error 'unavailable', retried once after a backoff, not at once", async () => {
  const client = offline();
  const handed = watch(client);
  const r = await render(h(SockgateProvider, { client }, h(Page)));
  const { socket } = handed[0];
  const at = [];
  const t0 = Date.now();
  socket.connect = () => (at.push(Date.now() - t0), socket); // count, do not dial
  await act(async () => {
    socket.emitReserved('connect_error', Object.assign(new Error('xhr poll error'), { description: 503 }));
  });
  assert.equal(lastSocket.error, 'unavailable');
  await sleep(1200);
  assert.equal(at.length, 1, `one retry, at ${JSON.stringify(at)} ms`);
  assert.ok(at[0] >= 450, `after the backoff (${at[0]} ms)`);
  await act(async () => r.unmount());
});

/**
 * A server event as Socket.IO delivers it (an EVENT packet: name, payload, meta) to a socket
 * that counts as connected for the moment (it buffers events until then).
 */
const deliver = (socket, ...data) =>
  act(async () => {
    socket.connected = true;
    socket.onevent({ type: 2, nsp: '/', data });
    socket.connected = false; // it has no transport to send a disconnect on
  });

test('messages: payload only to the handler, repeats dropped, offsets into the next handshake (and, opt-in, storage)', async () => {
  const storage = new Map();
  const store = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) };
  const client = offline({ persistOffsets: true, storage: store });
  const handed = watch(client);
  const got = [];
  function Bell() {
    useSocket({ userId: 'alice', onNotification: (n) => got.push(n) });
    return null;
  }
  const r = await render(h(SockgateProvider, { client }, h(Bell)));
  const { socket } = handed[0];
  await deliver(socket, 'notification', { title: 'one' }, { offset: 'r1-1', room: 'user:alice' });
  await deliver(socket, 'notification', { title: 'one' }, { offset: 'r1-1', room: 'user:alice' }); // replayed + live
  await deliver(socket, 'notification', { title: 'two' }, { offset: 'r1-2', room: 'user:alice' });
  assert.deepEqual(got, [{ title: 'one' }, { title: 'two' }]);
  const auth = await new Promise((resolve) => socket.auth(resolve));
  assert.deepEqual(auth, { offset: null, offsets: { 'user:alice': 'r1-2' } });
  assert.deepEqual(JSON.parse(storage.get('sockgate:offsets')), { 'user:alice': 'r1-2' });
  await act(async () => r.unmount());

  // The page reloads: a new client on the same storage starts from there.
  const reloaded = offline({ persistOffsets: true, storage: store });
  const held = reloaded.acquire();
  assert.deepEqual(await new Promise((resolve) => held.connection.socket.auth(resolve)), auth);
  held.release();
});

test('recovery_failed reaches onRecoveryFailed (useSocket) and the room\'s useChannel; onReconnect without it', async () => {
  const client = offline();
  const handed = watch(client);
  const calls = [];
  function Page2({ withHandler }) {
    useSocket({
      userId: 'alice',
      onReconnect: () => calls.push('reconnect'),
      ...(withHandler ? { onRecoveryFailed: (info) => calls.push(['socket', info]) } : {}),
    });
    useChannel('team:demo', {}, { onRecoveryFailed: (info) => calls.push(['team', info]) });
    return null;
  }
  const r = await render(h(SockgateProvider, { client }, h(Page2, { withHandler: true })));
  const { socket } = handed[0];
  await deliver(socket, 'recovery_failed', { reason: 'offset too old', room: 'team:demo' });
  assert.deepEqual(calls, [
    ['socket', { reason: 'offset too old', room: 'team:demo' }],
    ['team', { reason: 'offset too old', room: 'team:demo' }],
  ]);
  calls.length = 0;
  await deliver(socket, 'recovery_failed', { reason: 'offset too old', room: 'user:alice' });
  assert.deepEqual(calls, [['socket', { reason: 'offset too old', room: 'user:alice' }]], 'another room: not the channel');
  calls.length = 0;
  await act(async () => r.update(h(SockgateProvider, { client }, h(Page2, { withHandler: false }))));
  await deliver(socket, 'recovery_failed', { reason: 'offset too old', room: 'user:alice' });
  assert.deepEqual(calls, ['reconnect'], 'no onRecoveryFailed: onReconnect refetches');
  await act(async () => r.unmount());
});

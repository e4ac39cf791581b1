// The seed design, for comparison: socket.io 4.8 attached to the app's own node:http server
// (docs: shared/seeds "Pusher to Socket.IO Migration Design"), same page, same cookie auth
// (getCachedSession in a socket.io middleware), room `user:<id>`.
//
// Publishing: the same HTTP API as sockgate on a Unix socket (POST /publish, /publish/batch),
// calling io.to('user:' + id).emit(...) — so the load generator drives both servers the same
// way. POST /__gc runs a full GC (node --expose-gc) before memory is read.
//   PORT=4322 PUBLISH_SOCKET=/tmp/x.sock node --expose-gc bench/node-socketio/server.mjs
//
// Cluster mode, the seed's plan for several instances: REDIS_URL=redis://127.0.0.1:6379 attaches
// @socket.io/redis-adapter (its documented setup: createAdapter over a node-redis pub client
// and a duplicate for subscribing). Every io.to(room).emit is then also PUBLISHed to Redis and
// every other instance delivers it to its own sockets in that room.
// `npm ci` in this directory installs socket.io, the adapter and the client.
import http from 'node:http';
import fs from 'node:fs';
import { Server } from 'socket.io';
import { appHandler, getCachedSession, sendJson } from '../node-app/page.mjs';

const PORT = Number(process.env.PORT || 4322);
const PUBLISH_SOCKET = process.env.PUBLISH_SOCKET || '/tmp/node-socketio.sock';
const REDIS_URL = process.env.REDIS_URL || '';

const httpServer = http.createServer(appHandler);
httpServer.keepAliveTimeout = 5000;

const io = new Server(httpServer, { serveClient: false });
if (REDIS_URL) {
  const { createClient } = await import('redis');
  const { createAdapter } = await import('@socket.io/redis-adapter');
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
  console.log(`node-socketio: redis adapter on ${REDIS_URL}`);
}
io.use((socket, next) => {
  const session = getCachedSession(socket.handshake.headers.cookie);
  if (!session) return next(new Error('unauthorized'));
  socket.data.userId = String(session.userId);
  socket.join('user:' + socket.data.userId);
  next();
});

function pushNotification(msg) {
  const event = msg.event || 'notification';
  const data = msg.data ?? null;
  if (msg.broadcast) io.emit(event, data);
  else if (msg.room) io.to(msg.room).emit(event, data);
  else if (msg.userIds) io.to(msg.userIds.map((u) => 'user:' + u)).emit(event, data);
  else io.to('user:' + msg.userId).emit(event, data);
}

const publishServer = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    try {
      if (req.url === '/__gc') {
        globalThis.gc?.();
        return sendJson(res, 200, { ok: true, gc: typeof globalThis.gc === 'function' });
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      if (req.url === '/publish') {
        pushNotification(body);
        return sendJson(res, 200, { ok: true });
      }
      if (req.url === '/publish/batch') {
        for (const m of body.messages) pushNotification(m);
        return sendJson(res, 200, { ok: true, messages: body.messages.length });
      }
      sendJson(res, 404, { ok: false });
    } catch (e) {
      sendJson(res, 400, { ok: false, error: String(e) });
    }
  });
});
try {
  fs.unlinkSync(PUBLISH_SOCKET);
} catch {}
publishServer.listen(PUBLISH_SOCKET);
httpServer.listen(PORT, '127.0.0.1', () => console.log(`node-socketio listening on ${PORT}`));
process.on('SIGTERM', () => process.exit(0));

// The app behind sockgate in the benchmark: the SSR page and the session route, nothing else.
//   PORT=4321 node bench/node-app/app.mjs
import http from 'node:http';
import { renderPage, getCachedSession, sendHtml, sendJson } from './page.mjs';

const PORT = Number(process.env.PORT || 4321);
const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/api/session') {
    const s = getCachedSession(req.headers.cookie);
    return s ? sendJson(res, 200, s) : sendJson(res, 401, { error: 'unauthorized' });
  }
  if (path === '/ssr') return sendHtml(res, renderPage(req.url, getCachedSession(req.headers.cookie)?.userId));
  if (path === '/hello') return sendJson(res, 200, { ok: true });
  req.resume();
  sendJson(res, 404, { error: 'not found' });
});
server.keepAliveTimeout = 5000;
server.listen(PORT, '127.0.0.1', () => console.log(`node-app listening on ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));

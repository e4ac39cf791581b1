// Shared by both Node servers of the benchmark: the SSR-ish page and the session lookup.
//
// The page stands in for a server-rendered route of a real app: a layout, a nav, and a feed
// of 40 items rendered from data with HTML escaping and a little formatting (~12 KB of HTML).

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

const AUTHORS = ['Ada <admin>', 'Grace & co', 'Linus "T"', "O'Brien", 'Barbara', 'Ken', 'Dennis', 'Margaret'];
const TAGS = ['rust', 'node', 'socket.io', 'perf', 'ssr', 'http', 'websocket', 'linux'];

function item(i, seed) {
  const n = (seed * 31 + i * 17) % 997;
  return {
    id: 1000 + n,
    title: `Post #${n}: notes on ${TAGS[n % TAGS.length]} & <things> that matter`,
    author: AUTHORS[(n + i) % AUTHORS.length],
    at: new Date(1_760_000_000_000 + n * 3_600_000).toISOString(),
    likes: (n * 7) % 500,
    tags: [TAGS[n % 8], TAGS[(n + 3) % 8]],
    excerpt: `Item ${i} — a short excerpt with some "quoted" text, an ampersand & a few words to escape <b>.`,
  };
}

export function renderPage(url, userId) {
  const seed = Number(new URL(url, 'http://x').searchParams.get('seed') || 7) || 7;
  const items = [];
  for (let i = 0; i < 40; i++) items.push(item(i, seed));
  const rows = items
    .map(
      (it) => `<article class="post" id="p${it.id}">
  <h2><a href="/posts/${it.id}">${escapeHtml(it.title)}</a></h2>
  <p class="meta">by ${escapeHtml(it.author)} · <time datetime="${it.at}">${it.at.slice(0, 10)}</time> · ${it.likes.toLocaleString('en-US')} likes</p>
  <p>${escapeHtml(it.excerpt)}</p>
  <ul class="tags">${it.tags.map((t) => `<li>${escapeHtml(t)}</li>`).join('')}</ul>
</article>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Feed</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/app.css"></head>
<body><header><nav><a href="/">Home</a> <a href="/feed">Feed</a> <a href="/settings">Settings</a>
<span class="user">${userId ? `signed in as ${escapeHtml(userId)}` : 'guest'}</span></nav></header>
<main>
${rows}
</main>
<footer><p>Rendered at ${new Date().toISOString()}</p></footer>
<script type="module" src="/assets/app.js"></script></body></html>`;
}

export function parseCookies(header) {
  const out = {};
  if (!header) return out;
  for (const part of String(header).split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim();
    if (name && !(name in out)) out[name] = part.slice(eq + 1).trim();
  }
  return out;
}

// Like the seed's getCachedSession(): a lookup with a small in-process cache.
const cache = new Map();
export function getCachedSession(cookieHeader) {
  const sid = parseCookies(cookieHeader).sid;
  if (!sid) return null;
  let s = cache.get(sid);
  if (s === undefined) {
    s = sid.startsWith('user-') && sid.length > 5 ? { userId: sid.slice(5) } : null;
    cache.set(sid, s);
  }
  return s;
}

export function sendHtml(res, html) {
  const buf = Buffer.from(html);
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': buf.length });
  res.end(buf);
}

export function sendJson(res, status, body) {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': buf.length });
  res.end(buf);
}

/** The app's routes, the same in both designs: the SSR page, the session route, a tiny JSON. */
export function appHandler(req, res) {
  const path = req.url.split('?')[0];
  if (path === '/api/session') {
    const s = getCachedSession(req.headers.cookie);
    return s ? sendJson(res, 200, s) : sendJson(res, 401, { error: 'unauthorized' });
  }
  if (path === '/ssr') return sendHtml(res, renderPage(req.url, getCachedSession(req.headers.cookie)?.userId));
  if (path === '/hello') return sendJson(res, 200, { ok: true });
  req.resume();
  sendJson(res, 404, { error: 'not found' });
}

import type { APIRoute } from 'astro';
import { currentUser, json } from '../../../lib/http';
import { SUBSCRIBABLE_ROOMS } from '../../../lib/team';

// sockgate asks this before letting a socket subscribe to a room, forwarding the browser's
// cookies, with the JSON body {"room", "userId"} (userId: who sockgate authenticated the
// socket as). 2xx allows; 401/403/404 answer the browser "forbidden"; anything else
// (or no answer in time) "unavailable".
export const POST: APIRoute = async ({ request, cookies }) => {
  const me = currentUser(cookies);
  if (!me) return json({ error: 'unauthorized' }, 401);
  let body: { room?: unknown; userId?: unknown };
  try {
    body = (await request.json()) ?? {};
  } catch {
    return json({ error: 'expected a JSON body' }, 400);
  }
  // The cookie's user must be the socket's: a session that changed since the handshake is no
  // permission for the old one.
  if (body.userId !== me) return json({ error: 'forbidden' }, 403);
  if (typeof body.room !== 'string' || !SUBSCRIBABLE_ROOMS.includes(body.room)) {
    return json({ error: 'forbidden' }, 403);
  }
  return json({ ok: true });
};

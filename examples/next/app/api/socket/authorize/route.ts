import { currentUser, json } from '../../../../lib/session';
import { SUBSCRIBABLE_ROOMS } from '../../../../lib/team';

// sockgate asks this before letting a socket subscribe to a room, forwarding the browser's
// cookies, with the JSON body {"room", "userId"} (userId: who sockgate authenticated the
// socket as). 2xx allows; 401/403/404 answer the browser "forbidden".
export async function POST(request: Request) {
  const me = await currentUser();
  if (!me) return json({ error: 'unauthorized' }, 401);
  const body = (await request.json().catch(() => null)) as { room?: unknown; userId?: unknown } | null;
  // The cookie's user must be the socket's: a session that changed since the handshake is no
  // permission for the old one.
  if (!body || body.userId !== me || typeof body.room !== 'string' || !SUBSCRIBABLE_ROOMS.includes(body.room)) {
    return json({ error: 'forbidden' }, 403);
  }
  return json({ ok: true });
}

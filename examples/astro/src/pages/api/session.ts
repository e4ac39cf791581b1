import type { APIRoute } from 'astro';
import { currentUser, json } from '../../lib/http';
import { TEAM_ROOM } from '../../lib/team';
import { displayName } from '../../lib/store';

// sockgate calls this for every Socket.IO handshake, forwarding the browser's Cookie.
// 200 {"userId"} → socket joins room user:{userId}; anything else → connect_error "unauthorized".
// `rooms`: channels the socket joins at once (and leaves/joins when sockgate revalidates the
// session); `user`: what others see of this user in presence rooms.
export const GET: APIRoute = ({ cookies }) => {
  const userId = currentUser(cookies);
  return userId
    ? json({ userId, rooms: [TEAM_ROOM], user: { name: displayName(userId) } })
    : json({ error: 'unauthorized' }, 401);
};

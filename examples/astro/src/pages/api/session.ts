import type { APIRoute } from 'astro';
import { currentUser, json } from '../../lib/http';

// sockgate calls this for every Socket.IO handshake, forwarding the browser's Cookie.
// 200 {"userId"} → socket joins room user:{userId}; anything else → connect_error "unauthorized".
export const GET: APIRoute = ({ cookies }) => {
  const userId = currentUser(cookies);
  return userId ? json({ userId }) : json({ error: 'unauthorized' }, 401);
};

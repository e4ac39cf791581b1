import { currentUser, json } from '../../../lib/session';
import { displayName } from '../../../lib/users';

// sockgate calls this for every Socket.IO handshake, forwarding the browser's Cookie.
// 200 {"userId"} → the socket joins room user:{userId}; 401 → the handshake is refused
// ("unauthorized"). `user`: what others see of this user in presence rooms.
export async function GET() {
  const userId = await currentUser();
  return userId ? json({ userId, user: { name: displayName(userId) } }) : json({ error: 'unauthorized' }, 401);
}

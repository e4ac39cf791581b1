import { currentUser, json } from '../../../lib/session';
import { listNotifications } from '../../../lib/store';

// What the bell refetches after a reconnect: the logged-in user's notifications, newest first.
export async function GET() {
  const userId = await currentUser();
  if (!userId) return json({ error: 'unauthorized' }, 401);
  return json({ userId, notifications: listNotifications(userId) });
}

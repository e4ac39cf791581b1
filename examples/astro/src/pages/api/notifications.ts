import type { APIRoute } from 'astro';
import { currentUser, json } from '../../lib/http';
import { pushNotification } from '../../lib/socket-server';
import { addNotification, isUser, listNotifications } from '../../lib/store';

export const GET: APIRoute = ({ cookies }) => {
  const userId = currentUser(cookies);
  if (!userId) return json({ error: 'unauthorized' }, 401);
  return json({ userId, notifications: listNotifications(userId) });
};

// {title, body?, userId?} — userId defaults to the current user.
export const POST: APIRoute = async ({ request, cookies }) => {
  const me = currentUser(cookies);
  if (!me) return json({ error: 'unauthorized' }, 401);

  let input: { title?: unknown; body?: unknown; userId?: unknown };
  try {
    input = (await request.json()) ?? {};
  } catch {
    return json({ error: 'expected a JSON body' }, 400);
  }
  const { title, body } = input;
  const userId = input.userId ?? me;
  if (typeof title !== 'string' || !title.trim()) return json({ error: 'title is required' }, 400);
  if (body !== undefined && typeof body !== 'string') return json({ error: 'body must be a string' }, 400);
  if (!isUser(userId)) return json({ error: 'unknown user' }, 400);

  const notification = addNotification(userId, title.trim().slice(0, 200), body?.slice(0, 2000));
  // Stored first; a sockgate outage only means no live push (recipients: null).
  const recipients = await pushNotification(userId, notification);
  return json({ ok: true, notification, recipients }, 201);
};

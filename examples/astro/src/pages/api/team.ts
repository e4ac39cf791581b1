import { randomUUID } from 'node:crypto';
import type { APIRoute } from 'astro';
import { currentUser, json } from '../../lib/http';
import { publishToRoom } from '../../lib/socket-server';
import { TEAM_EVENT, TEAM_ROOM, type TeamMessage } from '../../lib/team';

// JSON {text}: publishes a message to room team:demo (the Team panel of everybody logged in).
// Nothing is stored: a team message reaches who is connected now.
// → 201 {"ok":true,"message","recipients"}; `recipients` is null when sockgate was unreachable.
export const POST: APIRoute = async ({ request, cookies }) => {
  const me = currentUser(cookies);
  if (!me) return json({ error: 'unauthorized' }, 401);
  let input: { text?: unknown };
  try {
    input = (await request.json()) ?? {};
  } catch {
    return json({ error: 'expected a JSON body' }, 400);
  }
  if (typeof input.text !== 'string' || !input.text.trim()) return json({ error: 'text is required' }, 400);
  const message: TeamMessage = { id: randomUUID(), from: me, text: input.text.trim().slice(0, 500), at: new Date().toISOString() };
  const recipients = await publishToRoom(TEAM_ROOM, TEAM_EVENT, message);
  return json({ ok: true, message, recipients }, 201);
};

// In-memory store: sessions and notifications. Lost on restart — this is a demo.
// Used by the server only (pages, server actions, route handlers): it holds every session.
import { randomBytes, randomUUID } from 'node:crypto';
import type { UserId } from './users';

export interface Notification {
  id: string;
  userId: string;
  title: string;
  body?: string;
  createdAt: string;
}

export const SESSION_COOKIE = 'sid';

interface Store {
  sessions: Map<string, UserId>;
  notifications: Map<string, Notification[]>;
}

// Kept on globalThis: Next.js bundles route handlers, pages and server actions separately, each
// may hold its own copy of this module, and dev-mode reloads would drop everybody's session.
const g = globalThis as typeof globalThis & { __exampleStore?: Store };
const store: Store = (g.__exampleStore ??= { sessions: new Map(), notifications: new Map() });

export function createSession(userId: UserId): string {
  const sid = randomBytes(32).toString('base64url');
  store.sessions.set(sid, userId);
  return sid;
}

export function getSessionUser(sid: string | undefined): UserId | null {
  return (sid && store.sessions.get(sid)) || null;
}

export function destroySession(sid: string | undefined): void {
  if (sid) store.sessions.delete(sid);
}

/** Newest first. */
export function listNotifications(userId: string): Notification[] {
  return [...(store.notifications.get(userId) ?? [])];
}

export function addNotification(userId: string, title: string, body?: string): Notification {
  const n: Notification = { id: randomUUID(), userId, title, createdAt: new Date().toISOString() };
  if (body) n.body = body;
  const list = store.notifications.get(userId) ?? [];
  list.unshift(n);
  if (list.length > 100) list.length = 100;
  store.notifications.set(userId, list);
  return n;
}

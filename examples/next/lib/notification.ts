// What the bell shows for any published payload. The app publishes complete notifications
// (store.ts), but a publish straight to sockgate's socket can carry anything — the README's
// `{"title":"Build finished"}`, a bare string — so missing parts are filled in here instead of
// rendering "Invalid Date" or dropping every message after the first that lacks an `id`.
import type { Notification } from './store';

let received = 0;

export function toNotification(payload: unknown, userId: string): Notification {
  const fields = (payload && typeof payload === 'object' ? payload : {}) as Record<string, unknown>;
  const text = (v: unknown) => (typeof v === 'string' && v.trim() ? v : undefined);
  const title =
    text(fields.title) ??
    text(fields.message) ??
    (typeof payload === 'string' ? payload : JSON.stringify(payload ?? null));
  const createdAt = text(fields.createdAt);
  const n: Notification = {
    id: text(fields.id) ?? (typeof fields.id === 'number' ? String(fields.id) : `live-${Date.now()}-${++received}`),
    userId: text(fields.userId) ?? userId,
    title,
    createdAt: createdAt && !Number.isNaN(Date.parse(createdAt)) ? createdAt : new Date().toISOString(),
  };
  const body = text(fields.body);
  if (body) n.body = body;
  return n;
}

/** `2026-01-31 12:00:00 UTC`: the same text on the server and in any browser, so a
 * server-rendered date never differs from the hydrated one (toLocaleString would). */
export function shownAt(iso: string): string {
  return `${iso.slice(0, 19).replace('T', ' ')} UTC`;
}

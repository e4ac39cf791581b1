'use client';
// The bell: notifications pushed to this user (sockgate's `notification` event in room
// user:{id}), newest first, on top of the list the server rendered. After a reconnect, and
// when the tab is shown again, it refetches the stored list: what was published meanwhile.
import { useCallback, useEffect, useState } from 'react';
import { useSocket } from '@sockgate/react';
import { toNotification } from '../lib/notification';
import type { Notification } from '../lib/store';
import NotificationItem from './NotificationItem';

interface Props {
  userId: string;
  initialNotifications: Notification[];
}

/** An inline icon: an emoji needs a font that not every machine has. */
function BellIcon() {
  return (
    <svg viewBox="0 0 16 16" aria-hidden="true" data-testid="bell-icon">
      <path fill="currentColor" d="M8 1a4 4 0 0 0-4 4v3L2 11v1h12v-1l-2-3V5a4 4 0 0 0-4-4zm-2 12a2 2 0 0 0 4 0z" />
    </svg>
  );
}

export default function NotificationBell({ userId, initialNotifications }: Props) {
  const [items, setItems] = useState<Notification[]>(initialNotifications);
  const [readIds, setReadIds] = useState<Set<string>>(() => new Set());

  const refetch = useCallback(async () => {
    try {
      const res = await fetch('/api/notifications', { credentials: 'same-origin' });
      if (res.ok) setItems(((await res.json()) as { notifications: Notification[] }).notifications);
    } catch {
      // offline: keep what we have, the next reconnect refetches again
    }
  }, []);

  const { isConnected, error } = useSocket<unknown>({
    userId,
    onNotification: (payload) => {
      const n = toNotification(payload, userId);
      setItems((prev) => (prev.some((p) => p.id === n.id) ? prev : [n, ...prev]));
    },
    onReconnect: refetch,
  });

  useEffect(() => {
    const onVisible = () => document.visibilityState === 'visible' && refetch();
    document.addEventListener('visibilitychange', onVisible);
    return () => document.removeEventListener('visibilitychange', onVisible);
  }, [refetch]);

  const unread = items.filter((n) => !readIds.has(n.id)).length;
  return (
    <section className="bell" aria-label="Notifications">
      <h2 className="bell-title">
        <BellIcon /> Notifications
        <span className="badge" data-testid="bell-count" hidden={unread === 0}>
          {unread}
        </span>
      </h2>
      <p className="row muted">
        <span>
          socket: <span data-testid="socket-status">{error ?? (isConnected ? 'connected' : 'disconnected')}</span>
        </span>
        <button type="button" onClick={() => setReadIds(new Set(items.map((n) => n.id)))} disabled={unread === 0}>
          Mark all read
        </button>
      </p>
      {items.length === 0 ? (
        <p className="muted" data-testid="notification-empty">
          No notifications yet.
        </p>
      ) : (
        <ul>
          {items.map((n) => (
            <NotificationItem key={n.id} n={n} testId="notification-item" unread={!readIds.has(n.id)} />
          ))}
        </ul>
      )}
    </section>
  );
}

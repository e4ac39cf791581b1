import { useCallback, useEffect, useState } from 'react';
import { SockgateProvider, useSocket } from '@sockgate/react';
import { toNotification } from '../lib/notification';
import { sockgate } from '../lib/sockgate';
import type { Notification } from '../lib/store';

interface Props {
  userId: string;
  initialNotifications?: Notification[];
}

export default function NotificationBell(props: Props) {
  return (
    <SockgateProvider client={sockgate}>
      <Bell {...props} />
    </SockgateProvider>
  );
}

function Bell({ userId, initialNotifications = [] }: Props) {
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
    // Anything published while we were disconnected is in the store: refetch.
    onReconnect: refetch,
  });

  // Same for a tab that comes back to the foreground.
  useEffect(() => {
    const onVisible = () => document.visibilityState === 'visible' && refetch();
    document.addEventListener('visibilitychange', onVisible);
    return () => document.removeEventListener('visibilitychange', onVisible);
  }, [refetch]);

  const unread = items.filter((n) => !readIds.has(n.id)).length;
  const status = error ?? (isConnected ? 'connected' : 'disconnected');

  return (
    <section className="bell" aria-label="Notifications">
      <h2>
        🔔 <span className="badge" data-testid="bell-count">{unread}</span>{' '}
        <button type="button" onClick={() => setReadIds(new Set(items.map((n) => n.id)))} disabled={unread === 0}>
          Mark all read
        </button>
      </h2>
      <p className="muted">
        socket: <span data-testid="socket-status">{status}</span>
      </p>
      {items.length === 0 ? (
        <p className="muted" data-testid="notification-empty">No notifications yet.</p>
      ) : (
        <ul>
          {items.map((n) => (
            <li key={n.id} data-testid="notification-item" className={readIds.has(n.id) ? '' : 'unread'}>
              <strong>{n.title}</strong>
              {n.body && <div>{n.body}</div>}
              <time className="muted" dateTime={n.createdAt}>{new Date(n.createdAt).toLocaleString()}</time>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

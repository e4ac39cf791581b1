import { useCallback, useEffect, useState } from 'react';
import { SockgateProvider, useSocket } from '@sockgate/react';
import { toNotification } from '../lib/notification';
import { sockgate } from '../lib/sockgate';
import type { Notification } from '../lib/store';

/**
 * The bell, drawn inline: an emoji (🔔) needs a font that has it, and renders as an empty box
 * where none is installed (a fresh Linux server, a headless browser).
 */
function BellIcon() {
  return (
    <svg className="bell-icon" data-testid="bell-icon" width="20" height="20" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
      <path fill="currentColor" d="M12 2.5a1.5 1.5 0 0 1 1.5 1.5v.6A6 6 0 0 1 18 10.5v4l2 2.5v1H4v-1l2-2.5v-4a6 6 0 0 1 4.5-5.9V4A1.5 1.5 0 0 1 12 2.5z" />
      <path fill="currentColor" d="M9.5 19.5h5a2.5 2.5 0 0 1-5 0z" />
    </svg>
  );
}

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
      <div className="bell-head">
        <h2>
          <BellIcon />
          Notifications
          {/* No badge when nothing is unread: a red "0" reads as something to look at. */}
          <span className="badge" data-testid="bell-count" hidden={unread === 0} aria-label={`${unread} unread`}>
            {unread}
          </span>
        </h2>
        <button
          type="button"
          className="quiet"
          data-testid="mark-all-read"
          onClick={() => setReadIds(new Set(items.map((n) => n.id)))}
          disabled={unread === 0}
        >
          Mark all read
        </button>
      </div>
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

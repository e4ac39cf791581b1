// One notification in a list: the bell's (in the browser) and History's (on the server).
import { shownAt } from '../lib/notification';
import type { Notification } from '../lib/store';

export default function NotificationItem({ n, testId, unread = false }: { n: Notification; testId: string; unread?: boolean }) {
  return (
    <li data-testid={testId} className={unread ? 'unread' : undefined}>
      <strong>{n.title}</strong>
      {n.body && <div>{n.body}</div>}
      <time className="muted" dateTime={n.createdAt}>
        {shownAt(n.createdAt)}
      </time>
    </li>
  );
}

import type { Metadata } from 'next';
import NotificationItem from '../../../components/NotificationItem';
import { currentUser } from '../../../lib/session';
import { listNotifications } from '../../../lib/store';

export const metadata: Metadata = { title: 'History' };

// Rendered on the server on every visit (it reads the cookie): the stored notifications, as
// they were when the page was asked for. The bell is what updates live.
export default async function History() {
  const me = (await currentUser())!;
  const items = listNotifications(me);
  return (
    <section className="history" aria-label="History">
      <h2>History</h2>
      <p className="muted" data-testid="history-count">
        {items.length} stored
      </p>
      <ul>
        {items.map((n) => (
          <NotificationItem key={n.id} n={n} testId="history-item" />
        ))}
      </ul>
    </section>
  );
}

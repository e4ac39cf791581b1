import type { Metadata } from 'next';
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
          <li key={n.id} data-testid="history-item">
            <strong>{n.title}</strong>
            <time className="muted" dateTime={n.createdAt}>
              {n.createdAt}
            </time>
          </li>
        ))}
      </ul>
    </section>
  );
}

'use client';
// Who is online: the members of the presence room every logged-in user may subscribe to,
// one entry per user whatever their number of tabs.
import { usePresence } from '@sockgate/react';
import { TEAM_PRESENCE_ROOM } from '../lib/team';

/** The session route's `user` object, as sockgate hands it to presence members. */
interface MemberInfo {
  name?: string;
}

export default function WhoIsOnline({ userId }: { userId: string }) {
  const members = usePresence<MemberInfo>(TEAM_PRESENCE_ROOM);
  const sorted = [...members].sort((a, b) => a.id.localeCompare(b.id));
  return (
    <section className="online" aria-label="Who is online">
      <h2>Who is online</h2>
      {sorted.length === 0 ? (
        <p className="muted" data-testid="online-empty">
          Nobody yet.
        </p>
      ) : (
        <ul>
          {sorted.map((m) => (
            <li key={m.id} data-testid="online-user" data-user-id={m.id}>
              {m.info?.name ?? m.id}
              {m.id === userId && <span className="muted"> (you)</span>}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

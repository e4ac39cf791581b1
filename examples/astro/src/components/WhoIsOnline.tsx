import { SockgateProvider, usePresence } from '@sockgate/react';
import { sockgate } from '../lib/sockgate';
import { TEAM_PRESENCE_ROOM } from '../lib/team';

interface Props {
  userId: string;
}

/** The session route's `user` object, as sockgate hands it to presence members. */
interface MemberInfo {
  name?: string;
}

export default function WhoIsOnline(props: Props) {
  return (
    <SockgateProvider client={sockgate}>
      <Online {...props} />
    </SockgateProvider>
  );
}

function Online({ userId }: Props) {
  const members = usePresence<MemberInfo>(TEAM_PRESENCE_ROOM);
  const sorted = [...members].sort((a, b) => a.id.localeCompare(b.id));
  return (
    <section className="online" aria-label="Who is online">
      <h2>Who is online</h2>
      {sorted.length === 0 ? (
        <p className="muted" data-testid="online-empty">Nobody yet.</p>
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

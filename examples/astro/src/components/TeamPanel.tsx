import { useState } from 'react';
import { SockgateProvider, useChannel } from '@sockgate/react';
import { sockgate } from '../lib/sockgate';
import { TEAM_EVENT, TEAM_ROOM, type TeamMessage } from '../lib/team';

let received = 0;

/** A team message as published by /api/team, or anything else published to the room (curl). */
function toMessage(data: unknown): TeamMessage {
  const d = (data && typeof data === 'object' ? data : {}) as Record<string, unknown>;
  const text = (v: unknown) => (typeof v === 'string' && v.trim() ? v : undefined);
  return {
    id: text(d.id) ?? `live-${Date.now()}-${++received}`,
    from: text(d.from) ?? 'someone',
    text: text(d.text) ?? (typeof data === 'string' ? data : JSON.stringify(data ?? null)),
    at: text(d.at) ?? new Date().toISOString(),
  };
}

/** A channel of the user's choice, to see what sockgate answers (e.g. "forbidden"). */
function OtherRoom({ room }: { room: string }) {
  const { status, error } = useChannel(room);
  return (
    <span data-testid="other-room-status">
      {room}: {error ?? status}
    </span>
  );
}

export default function TeamPanel() {
  return (
    <SockgateProvider client={sockgate}>
      <Team />
    </SockgateProvider>
  );
}

function Team() {
  const [messages, setMessages] = useState<TeamMessage[]>([]);
  const [draft, setDraft] = useState('');
  const [result, setResult] = useState('');
  const [otherRoom, setOtherRoom] = useState('');
  const [tried, setTried] = useState<string | null>(null);

  const { status, error } = useChannel(TEAM_ROOM, {
    [TEAM_EVENT]: (data: unknown) => {
      const m = toMessage(data);
      setMessages((prev) => (prev.some((p) => p.id === m.id) ? prev : [m, ...prev].slice(0, 50)));
    },
  });

  const send = async () => {
    const text = draft.trim() || `Hello team #${messages.length + 1}`;
    try {
      const res = await fetch('/api/team', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ text }),
      });
      const data = await res.json();
      setResult(res.ok ? `Sent; live recipients: ${data.recipients ?? 'sockgate unreachable'}` : `Error: ${data.error}`);
      if (res.ok) setDraft('');
    } catch (err) {
      setResult(`Error: ${(err as Error).message}`);
    }
  };

  return (
    <section className="team" aria-label="Team">
      <h2>Team <span className="muted">({TEAM_ROOM})</span></h2>
      <p className="muted">
        channel: <span data-testid="team-status">{error ?? status}</span>
      </p>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          void send();
        }}
      >
        <input
          aria-label="Message to the team"
          data-testid="team-input"
          value={draft}
          placeholder="Say something to the team"
          onChange={(e) => setDraft(e.target.value)}
        />
        <button type="submit" data-testid="team-send">Send to team</button>
      </form>
      <p className="muted" data-testid="team-result" aria-live="polite">{result}</p>
      {messages.length === 0 ? (
        <p className="muted" data-testid="team-empty">No team messages yet.</p>
      ) : (
        <ul>
          {messages.map((m) => (
            <li key={m.id} data-testid="team-message">
              <strong>{m.from}</strong>: <span data-testid="team-message-text">{m.text}</span>
            </li>
          ))}
        </ul>
      )}
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          setTried(otherRoom.trim() || null);
        }}
      >
        <input
          aria-label="Another room"
          data-testid="other-room-input"
          value={otherRoom}
          placeholder="another room, e.g. team:secret"
          onChange={(e) => setOtherRoom(e.target.value)}
        />
        <button type="submit" data-testid="other-room-join">Subscribe</button>
        {tried && <OtherRoom key={tried} room={tried} />}
      </form>
    </section>
  );
}

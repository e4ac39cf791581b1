'use client';
// "Notify me" / "Notify <other>": each click calls the `notify` server action, which stores
// the notification and publishes it through sockgate; the bell shows it when it arrives.
import { useState, useTransition } from 'react';
import { notify } from '../app/actions';
import { displayName } from '../lib/users';

export default function NotifyButtons({ me, other }: { me: string; other: string }) {
  const [result, setResult] = useState('');
  const [count, setCount] = useState(0);
  const [pending, startTransition] = useTransition();

  const send = (userId: string) => {
    const title = `Hello #${count + 1} for ${userId}`;
    setCount((n) => n + 1);
    startTransition(async () => {
      const res = await notify(userId, title).catch((err: Error) => ({ ok: false as const, error: err.message }));
      setResult(
        res.ok ? `Stored "${res.title}"; live recipients: ${res.recipients ?? 'sockgate unreachable'}` : `Error: ${res.error}`,
      );
    });
  };

  return (
    <>
      <div className="row">
        <button type="button" data-testid="notify-self" disabled={pending} onClick={() => send(me)}>
          Notify me
        </button>
        <button type="button" data-testid="notify-other" disabled={pending} onClick={() => send(other)}>
          Notify {displayName(other)}
        </button>
      </div>
      <p className="muted" data-testid="notify-result" aria-live="polite">
        {result}
      </p>
    </>
  );
}

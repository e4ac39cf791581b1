// The user's connection: `useSocket({ userId, onNotification, onReconnect })` →
// `{ isConnected, error }` — usePusher's interface, Socket.IO to sockgate.
import { useEffect, useRef, useState } from 'react';
import type { RecoveryFailed } from './connection.js';
import { useSockgateClient } from './provider.js';
import type { SocketError } from './refusal.js';

export interface UseSocketOptions<T = unknown> {
  /** Connect while set (the session cookie says who it is; this says whether). */
  userId: string | null | undefined;
  /** Each `notification` event's payload (sockgate's `pushNotification`). */
  onNotification?: (payload: T) => void;
  /**
   * After every reconnection (not the first connect), and when messages were missed and
   * cannot be replayed unless `onRecoveryFailed` is given: refetch what the page shows.
   */
  onReconnect?: () => void;
  /** Messages of `room` were missed and cannot be replayed (sockgate's `recovery_failed`). */
  onRecoveryFailed?: (info: RecoveryFailed) => void;
}

export interface UseSocketResult {
  isConnected: boolean;
  /** `unauthorized` (not retried), `unavailable` (retried with backoff), or the transport's. */
  error: SocketError | null;
}

export function useSocket<T = unknown>({
  userId,
  onNotification,
  onReconnect,
  onRecoveryFailed,
}: UseSocketOptions<T>): UseSocketResult {
  const client = useSockgateClient();
  const [isConnected, setIsConnected] = useState(false);
  const [error, setError] = useState<SocketError | null>(null);

  // Callbacks live in a ref so changing them never re-creates the socket.
  const callbacks = useRef({ onNotification, onReconnect, onRecoveryFailed });
  useEffect(() => {
    callbacks.current = { onNotification, onReconnect, onRecoveryFailed };
  });

  useEffect(() => {
    if (!userId) return;
    const { connection, release } = client.acquire();
    const sync = () => {
      setIsConnected(connection.isConnected);
      setError(connection.error);
    };
    sync();
    // Every connect after the first this hook saw is a reconnection, whoever retried (the
    // Manager or the connection's own backoff); a socket already up counts as the first.
    let everConnected = connection.isConnected;
    const offs = [
      connection.onState(sync),
      connection.onConnect(() => {
        if (everConnected) callbacks.current.onReconnect?.();
        everConnected = true;
      }),
      connection.onRecoveryFailed((info) => {
        const { onRecoveryFailed: failed, onReconnect: reconnected } = callbacks.current;
        if (failed) failed(info);
        else reconnected?.();
      }),
      connection.onEvent((event, payload) => {
        if (event === 'notification') callbacks.current.onNotification?.(payload as T);
      }),
    ];
    return () => {
      for (const off of offs) off();
      release();
      setIsConnected(false);
    };
  }, [userId, client]);

  return { isConnected, error };
}

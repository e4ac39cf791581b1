// Replaces usePusher: same interface, Socket.IO to the same origin (answered by sockgate).
//
// Missed messages: the hook asks for offsets in every handshake (`auth.offset`, `null` on the
// first connect), so sockgate sends each user message as (payload, { offset }) — sockets that do
// not ask get the payload alone. The hook remembers the last offset and reports it when it
// reconnects (the handshake `auth`, computed per attempt), so sockgate replays what was published meanwhile, in order, before live
// messages. If that is older than what sockgate keeps, it emits `recovery_failed` and the hook
// calls `onReconnect` so the app refetches. Handlers still receive just the payload.
// A message whose offset was seen already is dropped: in cluster mode a message published
// through another instance during a reconnect can come twice (replayed, then live).
import { useEffect, useRef, useState } from 'react';
import { io } from 'socket.io-client';

export interface UseSocketOptions<T = unknown> {
  userId: string | null | undefined;
  onNotification?: (payload: T) => void;
  onReconnect?: () => void;
}

export interface UseSocketResult {
  isConnected: boolean;
  error: string | null;
}

// Manual reconnects (the cases Socket.IO does not retry by itself): 500 ms doubling up to
// 15 s, each with up to 100% random jitter so a restarted sockgate is not hit all at once.
const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15_000;
const retryDelay = (attempt: number) =>
  Math.min(RETRY_BASE_MS * 2 ** attempt, RETRY_MAX_MS) * (1 + Math.random());

/** Whether `offset` comes after `last`. Offsets are `<run>-<n>` (one sockgate) or
 * `<generation>:<ms>-<seq>` (cluster); another run or generation counts as newer. */
/**
 * Why the connection was refused. sockgate refuses a handshake whose session the app does not
 * accept with HTTP 401 (503 when the session route cannot answer) before any socket exists;
 * over long-polling the client reports that status as the error's `description`.
 */
export function refusal(err: Error & { description?: unknown }): string {
  if (err.description === 401) return 'unauthorized';
  if (err.description === 503) return 'session unavailable';
  return err.message;
}

export function isNewerOffset(offset: string, last: string | null): boolean {
  if (!last) return true;
  const parse = (o: string): [string, number[]] => {
    const colon = o.indexOf(':');
    if (colon >= 0) return [o.slice(0, colon), o.slice(colon + 1).split('-').map(Number)];
    const dash = o.indexOf('-');
    return [o.slice(0, dash), [Number(o.slice(dash + 1))]];
  };
  const [runA, a] = parse(offset);
  const [runB, b] = parse(last);
  if (runA !== runB) return true;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return false;
}

export function useSocket<T = unknown>({ userId, onNotification, onReconnect }: UseSocketOptions<T>): UseSocketResult {
  const [isConnected, setIsConnected] = useState(false);
  const [error, setError] = useState<string | null>(null);

  // Callbacks live in refs so changing them never re-creates the socket.
  const onNotificationRef = useRef(onNotification);
  const onReconnectRef = useRef(onReconnect);
  useEffect(() => {
    onNotificationRef.current = onNotification;
    onReconnectRef.current = onReconnect;
  });

  useEffect(() => {
    if (!userId) return;

    // ?transport=polling forces long-polling only (handy for tests).
    const forcePolling = new URLSearchParams(window.location.search).get('transport') === 'polling';
    let lastOffset: string | null = null;
    const socket = io({
      path: '/socket.io',
      withCredentials: true,
      auth: (cb) => cb({ offset: lastOffset }),
      ...(forcePolling ? { transports: ['polling'] } : {}),
    });

    let lastConnectError: string | null = null;
    let everConnected = false;
    let retryAttempt = 0;
    let manualTimer: ReturnType<typeof setTimeout> | undefined;

    const scheduleConnect = () => {
      clearTimeout(manualTimer);
      manualTimer = setTimeout(() => {
        if (!socket.connected) socket.connect();
      }, retryDelay(retryAttempt++));
    };

    // Set by trackOffset, which Socket.IO runs (onAny) just before the event's own handler.
    let repeated = false;
    // The offsets seen lately: repeats come within a reconnect, so a short memory suffices.
    const seen = new Set<string>();
    const seenOrder: string[] = [];
    const handleNotification = (payload: T) => {
      if (!repeated) onNotificationRef.current?.(payload);
    };
    // Offsets count every message to the user, whatever its event name.
    const trackOffset = (_event: string, _payload: unknown, meta?: { offset?: string }) => {
      const offset = meta?.offset;
      repeated = typeof offset === 'string' && seen.has(offset);
      if (typeof offset !== 'string' || repeated) return;
      seen.add(offset);
      seenOrder.push(offset);
      if (seenOrder.length > 1000) seen.delete(seenOrder.shift()!);
      if (isNewerOffset(offset, lastOffset)) lastOffset = offset;
    };
    // Messages were missed and cannot be replayed: the app refetches.
    const handleRecoveryFailed = () => onReconnectRef.current?.();

    const handleConnect = () => {
      lastConnectError = null;
      retryAttempt = 0;
      setIsConnected(true);
      setError(null);
      // Every connect after the first is a reconnection, whoever retried (the Manager or us).
      // 'connect' comes once sockgate has put the socket in the user's room, so a refetch
      // started now cannot miss a message published in between.
      if (everConnected) onReconnectRef.current?.();
      everConnected = true;
    };

    const handleDisconnect = (reason: string) => {
      setIsConnected(false);
      // The server closed the socket on purpose (sockgate restart/drain, or the session was
      // revalidated away). Socket.IO does not retry that, so we do — unless we were last
      // rejected as unauthorized (then a retry cannot succeed).
      if (reason === 'io server disconnect' && lastConnectError !== 'unauthorized') {
        scheduleConnect();
      }
    };

    const handleConnectError = (err: Error) => {
      const message = refusal(err);
      lastConnectError = message;
      setIsConnected(false);
      setError(message);
      if (message === 'unauthorized') {
        // No (valid) session: stop every retry path until the page is reloaded.
        clearTimeout(manualTimer);
        socket.disconnect();
      } else if (!socket.active) {
        // Refused by the server for another reason (e.g. "session unavailable" while the app
        // restarts): Socket.IO gives up on such refusals, we retry with backoff.
        scheduleConnect();
      }
      // Otherwise (transport error) the Manager's own reconnection is already on it.
    };

    socket.on('notification', handleNotification);
    socket.on('recovery_failed', handleRecoveryFailed);
    socket.onAny(trackOffset);
    socket.on('connect', handleConnect);
    socket.on('disconnect', handleDisconnect);
    socket.on('connect_error', handleConnectError);

    return () => {
      clearTimeout(manualTimer);
      socket.off('notification', handleNotification);
      socket.off('recovery_failed', handleRecoveryFailed);
      socket.offAny(trackOffset);
      socket.off('connect', handleConnect);
      socket.off('disconnect', handleDisconnect);
      socket.off('connect_error', handleConnectError);
      socket.disconnect();
      setIsConnected(false);
    };
  }, [userId]);

  return { isConnected, error };
}

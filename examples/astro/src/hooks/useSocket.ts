// Replaces usePusher: same interface, Socket.IO to the same origin (answered by sockgate).
//
// Missed messages: the hook asks for offsets in every handshake (`auth.offsets`), so sockgate
// sends each message of a room (the user's, and every channel's) as (payload, { offset, room })
// — sockets that do not ask get the payload alone. The hook remembers the last offset of each
// room (at most MAX_ROOMS) and reports them when it reconnects (the handshake `auth`, computed
// per attempt): sockgate replays what was published meanwhile to the user room and to the
// rooms the session lists, in order, before live messages; useChannel subscribes with the
// room's offset for the others. If an offset is older than what sockgate keeps, it emits
// `recovery_failed` ({ reason, room }) and the hook calls `onReconnect` so the app refetches.
// Handlers still receive just the payload. A message whose (room, offset) was seen already is
// dropped: in cluster mode a message published through another instance during a reconnect
// can come twice (replayed, then live). `auth.offset` is kept for a sockgate that sends no
// `room` (older ones), whose offsets are the user room's.
//
// One connection per page: useSocket, useChannel and usePresence (./useChannel.ts) all share
// the socket made here (`acquireConnection`), opened by the first hook that mounts and closed
// shortly after the last one unmounts.
import { useEffect, useRef, useState } from 'react';
import { io, type Socket } from 'socket.io-client';

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

type Listener<A extends unknown[]> = (...args: A) => void;

/** Rooms whose last offset is kept (sockgate reads at most `channels.max_rooms_per_socket`). */
const MAX_ROOMS = 100;

/** The page's one Socket.IO connection, shared by every hook (see `acquireConnection`). */
export class SharedConnection {
  readonly socket: Socket;
  isConnected = false;
  error: string | null = null;
  // The last offset seen per room (`meta.room`; '' for a sockgate that sends none).
  private lastOffsets = new Map<string, string>();
  private lastConnectError: string | null = null;
  private retryAttempt = 0;
  private manualTimer: ReturnType<typeof setTimeout> | undefined;
  // The offsets seen lately: repeats come within a reconnect, so a short memory suffices.
  private seen = new Set<string>();
  private seenOrder: string[] = [];
  private stateListeners = new Set<Listener<[]>>();
  private connectListeners = new Set<Listener<[]>>();
  private recoveryFailedListeners = new Set<Listener<[]>>();
  private eventListeners = new Set<Listener<[string, unknown]>>();

  constructor() {
    // ?transport=polling forces long-polling only (handy for tests).
    const forcePolling = new URLSearchParams(window.location.search).get('transport') === 'polling';
    this.socket = io({
      path: '/socket.io',
      withCredentials: true,
      auth: (cb) => {
        const offsets: Record<string, string> = {};
        for (const [room, offset] of this.lastOffsets) if (room) offsets[room] = offset;
        cb({ offset: this.lastOffsets.get('') ?? null, offsets });
      },
      ...(forcePolling ? { transports: ['polling'] } : {}),
    });
    this.socket.onAny(this.handleAny);
    this.socket.on('recovery_failed', this.handleRecoveryFailed);
    this.socket.on('connect', this.handleConnect);
    this.socket.on('disconnect', this.handleDisconnect);
    this.socket.on('connect_error', this.handleConnectError);
  }

  /** State changes (isConnected, error). */
  onState(fn: Listener<[]>) {
    this.stateListeners.add(fn);
    return () => void this.stateListeners.delete(fn);
  }
  /** Every connect, the first one included. */
  onConnect(fn: Listener<[]>) {
    this.connectListeners.add(fn);
    return () => void this.connectListeners.delete(fn);
  }
  /** Messages were missed and cannot be replayed: the app refetches. */
  onRecoveryFailed(fn: Listener<[]>) {
    this.recoveryFailedListeners.add(fn);
    return () => void this.recoveryFailedListeners.delete(fn);
  }
  /** The last offset seen in `room`, if any (useChannel subscribes with it). */
  offsetOf(room: string): string | undefined {
    return this.lastOffsets.get(room);
  }

  /** Every event from the server (payload only), repeats (an offset seen already) dropped. */
  onEvent(fn: Listener<[string, unknown]>) {
    this.eventListeners.add(fn);
    return () => void this.eventListeners.delete(fn);
  }

  close() {
    clearTimeout(this.manualTimer);
    this.socket.offAny(this.handleAny);
    this.socket.removeAllListeners();
    this.socket.disconnect();
    this.setState(false, this.error);
  }

  private setState(isConnected: boolean, error: string | null) {
    if (isConnected === this.isConnected && error === this.error) return;
    this.isConnected = isConnected;
    this.error = error;
    for (const fn of [...this.stateListeners]) fn();
  }

  private scheduleConnect() {
    clearTimeout(this.manualTimer);
    this.manualTimer = setTimeout(() => {
      if (!this.socket.connected) this.socket.connect();
    }, retryDelay(this.retryAttempt++));
  }

  // Offsets count every message of a room, whatever its event name.
  private handleAny = (event: string, payload: unknown, meta?: { offset?: string; room?: string }) => {
    const offset = meta?.offset;
    if (typeof offset === 'string') {
      const room = typeof meta?.room === 'string' ? meta.room : '';
      const key = `${room}\n${offset}`;
      if (this.seen.has(key)) return; // a repeat: handlers already had it
      this.seen.add(key);
      this.seenOrder.push(key);
      if (this.seenOrder.length > 1000) this.seen.delete(this.seenOrder.shift()!);
      if (isNewerOffset(offset, this.lastOffsets.get(room) ?? null)) {
        this.lastOffsets.delete(room); // re-inserted last: the oldest room is dropped first
        this.lastOffsets.set(room, offset);
        if (this.lastOffsets.size > MAX_ROOMS) this.lastOffsets.delete(this.lastOffsets.keys().next().value!);
      }
    }
    if (event === 'recovery_failed') return;
    for (const fn of [...this.eventListeners]) fn(event, payload);
  };

  private handleRecoveryFailed = () => {
    for (const fn of [...this.recoveryFailedListeners]) fn();
  };

  private handleConnect = () => {
    this.lastConnectError = null;
    this.retryAttempt = 0;
    this.setState(true, null);
    // 'connect' comes once sockgate has put the socket in the user's room, so a refetch
    // started now cannot miss a message published in between.
    for (const fn of [...this.connectListeners]) fn();
  };

  private handleDisconnect = (reason: string) => {
    this.setState(false, this.error);
    // The server closed the socket on purpose (sockgate restart/drain, or the session was
    // revalidated away). Socket.IO does not retry that, so we do — unless we were last
    // rejected as unauthorized (then a retry cannot succeed).
    if (reason === 'io server disconnect' && this.lastConnectError !== 'unauthorized') {
      this.scheduleConnect();
    }
  };

  private handleConnectError = (err: Error) => {
    const message = refusal(err);
    this.lastConnectError = message;
    this.setState(false, message);
    if (message === 'unauthorized') {
      // No (valid) session: stop every retry path until the page is reloaded.
      clearTimeout(this.manualTimer);
      this.socket.disconnect();
    } else if (!this.socket.active) {
      // Refused by the server for another reason (e.g. "session unavailable" while the app
      // restarts): Socket.IO gives up on such refusals, we retry with backoff.
      this.scheduleConnect();
    }
    // Otherwise (transport error) the Manager's own reconnection is already on it.
  };
}

let shared: SharedConnection | null = null;
let holders = 0;
let closeTimer: ReturnType<typeof setTimeout> | undefined;

/**
 * The page's shared connection, opened on first use. Call the returned `release` when done:
 * the socket closes once nobody holds it (a moment later, so a remount — React StrictMode, a
 * component moving — keeps the same socket instead of reconnecting).
 */
export function acquireConnection(): { connection: SharedConnection; release: () => void } {
  clearTimeout(closeTimer);
  shared ??= new SharedConnection();
  holders++;
  const connection = shared;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    if (--holders > 0) return;
    closeTimer = setTimeout(() => {
      if (holders === 0 && shared === connection) {
        shared = null;
        connection.close();
      }
    }, 0);
  };
  return { connection, release };
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
    const { connection, release } = acquireConnection();
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
        if (everConnected) onReconnectRef.current?.();
        everConnected = true;
      }),
      connection.onRecoveryFailed(() => onReconnectRef.current?.()),
      connection.onEvent((event, payload) => {
        if (event === 'notification') onNotificationRef.current?.(payload as T);
      }),
    ];
    return () => {
      for (const off of offs) off();
      release();
      setIsConnected(false);
    };
  }, [userId]);

  return { isConnected, error };
}

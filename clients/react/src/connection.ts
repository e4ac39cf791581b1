// The page's one Socket.IO connection, shared by every hook, and the client that opens it on
// first use and closes it shortly after the last user lets go.
import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';
import { Offsets, type OffsetStorage } from './offsets.js';
import { refusal, type SocketError } from './refusal.js';

export interface SockgateOptions {
  /** Where sockgate answers Socket.IO (default: the page's own origin). */
  url?: string;
  /** sockgate's Socket.IO path (default `/socket.io`). */
  path?: string;
  /**
   * Keep each room's last offset in `sessionStorage` so that a reload resumes where the page
   * was (sockgate replays what was published meanwhile) instead of starting from now. Off by
   * default: `true` uses the key `sockgate:offsets`, a string is the key to use.
   */
  persistOffsets?: boolean | string;
  /** Where persisted offsets go (default `sessionStorage`); for tests. */
  storage?: OffsetStorage;
  /** More Socket.IO client options (e.g. `{ transports: ['polling'] }`). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

/** sockgate's `recovery_failed`: messages of `room` were missed and cannot be replayed. */
export interface RecoveryFailed {
  reason: string;
  room: string | null;
}

type Listener<A extends unknown[]> = (...args: A) => void;

// Manual reconnects (the cases Socket.IO does not retry by itself): 500 ms doubling up to
// 15 s, each with up to 100% random jitter so a restarted sockgate is not hit all at once.
const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15_000;
const retryDelay = (attempt: number) =>
  Math.min(RETRY_BASE_MS * 2 ** attempt, RETRY_MAX_MS) * (1 + Math.random());

/**
 * One Socket.IO connection. Every handshake asks for offsets (`auth.offsets`, computed per
 * attempt), so sockgate sends each message of a room as (payload, { offset, room }) and
 * replays, on a reconnect, what was published meanwhile; listeners get the payload only, and
 * a message seen already is dropped.
 */
export class SharedConnection {
  readonly socket: Socket;
  isConnected = false;
  error: SocketError | null = null;
  private lastConnectError: SocketError | null = null;
  private retryAttempt = 0;
  private manualTimer: ReturnType<typeof setTimeout> | undefined;
  private stateListeners = new Set<Listener<[]>>();
  private connectListeners = new Set<Listener<[]>>();
  private recoveryFailedListeners = new Set<Listener<[RecoveryFailed]>>();
  private eventListeners = new Set<Listener<[string, unknown]>>();

  constructor(
    options: SockgateOptions,
    private readonly offsets: Offsets,
  ) {
    const opts: Partial<ManagerOptions & SocketOptions> = {
      path: options.path ?? '/socket.io',
      withCredentials: true,
      ...options.socketOptions,
      auth: (cb) => cb(this.offsets.auth()),
    };
    this.socket = options.url === undefined ? io(opts) : io(options.url, opts);
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
  onRecoveryFailed(fn: Listener<[RecoveryFailed]>) {
    this.recoveryFailedListeners.add(fn);
    return () => void this.recoveryFailedListeners.delete(fn);
  }
  /** Every event from the server (payload only), repeats (an offset seen already) dropped. */
  onEvent(fn: Listener<[string, unknown]>) {
    this.eventListeners.add(fn);
    return () => void this.eventListeners.delete(fn);
  }
  /** The last offset seen in `room`, if any (useChannel subscribes with it). */
  offsetOf(room: string): string | undefined {
    return this.offsets.get(room);
  }

  close() {
    clearTimeout(this.manualTimer);
    this.socket.offAny(this.handleAny);
    this.socket.removeAllListeners();
    this.socket.disconnect();
    this.setState(false, this.error);
  }

  private setState(isConnected: boolean, error: SocketError | null) {
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
  private handleAny = (event: string, payload: unknown, meta?: { offset?: unknown; room?: unknown }) => {
    const offset = meta?.offset;
    if (typeof offset === 'string') {
      const room = typeof meta?.room === 'string' ? meta.room : '';
      if (!this.offsets.see(room, offset)) return; // a repeat: handlers already had it
    }
    if (event === 'recovery_failed') return;
    for (const fn of [...this.eventListeners]) fn(event, payload);
  };

  private handleRecoveryFailed = (data: unknown) => {
    const d = (data ?? {}) as { reason?: unknown; room?: unknown };
    const info: RecoveryFailed = {
      reason: typeof d.reason === 'string' ? d.reason : 'unknown',
      room: typeof d.room === 'string' ? d.room : null,
    };
    for (const fn of [...this.recoveryFailedListeners]) fn(info);
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
    const error = refusal(err);
    this.lastConnectError = error;
    this.setState(false, error);
    if (error === 'unauthorized') {
      // No (valid) session: stop every retry path (no retry storm against the session
      // route) until the page reloads.
      clearTimeout(this.manualTimer);
      this.socket.disconnect();
    } else if (!this.socket.active) {
      // Refused by the server for another reason (e.g. `unavailable` while the app
      // restarts): Socket.IO gives up on such refusals, we retry with backoff.
      this.scheduleConnect();
    }
    // Otherwise (transport error) the Manager's own reconnection, with its backoff, is on it.
  };
}

function sessionStorageOrNone(): OffsetStorage | undefined {
  try {
    return typeof sessionStorage === 'undefined' ? undefined : sessionStorage;
  } catch {
    return undefined; // access denied (sandboxed iframe, storage disabled)
  }
}

/**
 * Opens the shared connection on first use and closes it once nobody holds it. Nothing
 * happens when it is made: no socket and no storage until a hook mounts, so it can be made
 * at module level, during server rendering, or once per test.
 */
export class SockgateClient {
  private shared: SharedConnection | null = null;
  private holders = 0;
  private closeTimer: ReturnType<typeof setTimeout> | undefined;
  // Kept across connections: hooks that unmount and mount again (client-side navigation)
  // resume from the offsets the previous connection saw.
  private offsets: Offsets | null = null;

  constructor(readonly options: SockgateOptions = {}) {}

  /**
   * The shared connection, opened on first use. Call the returned `release` when done: the
   * socket closes once nobody holds it, a moment later, so that a remount (React strict
   * mode's double mount, a component moving) keeps the same socket instead of reconnecting.
   */
  acquire(): { connection: SharedConnection; release: () => void } {
    clearTimeout(this.closeTimer);
    this.shared ??= new SharedConnection(this.options, this.offsetStore());
    this.holders++;
    const connection = this.shared;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      if (--this.holders > 0) return;
      this.closeTimer = setTimeout(() => {
        if (this.holders === 0 && this.shared === connection) {
          this.shared = null;
          connection.close();
        }
      }, 0);
    };
    return { connection, release };
  }

  private offsetStore(): Offsets {
    if (this.offsets) return this.offsets;
    const { persistOffsets, storage } = this.options;
    if (!persistOffsets) return (this.offsets = new Offsets());
    const key = typeof persistOffsets === 'string' ? persistOffsets : undefined;
    return (this.offsets = new Offsets(storage ?? sessionStorageOrNone(), key));
  }
}

/** A client of its own (give it to `<SockgateProvider client>`). */
export function createSockgate(options?: SockgateOptions): SockgateClient {
  return new SockgateClient(options);
}

let fallback: SockgateClient | undefined;

/** The client hooks use outside any `<SockgateProvider>`: one per page, made on first use. */
export function defaultClient(): SockgateClient {
  return (fallback ??= new SockgateClient());
}

/** The default client's connection (see `SockgateClient.acquire`). */
export function acquireConnection(): { connection: SharedConnection; release: () => void } {
  return defaultClient().acquire();
}

// One room on one connection: its subscription (renewed on every connect, with the room's
// last offset so sockgate replays what was missed), its state, its presence list. Several
// hooks on the same room share one Channel; it unsubscribes when the last lets go.
import type { SharedConnection, SockgateClient } from './connection.js';

/**
 * - `disconnected`: no connection (yet, or it is reconnecting);
 * - `subscribing`: asked sockgate, waiting for its answer;
 * - `subscribed`: in the room, events arrive;
 * - `error`: refused, see `error` ("forbidden", "invalid room", "too many rooms",
 *   "rate limited", "unavailable", or "timeout" when no answer came). "rate limited",
 *   "unavailable" and "timeout" are retried with backoff.
 */
export type ChannelStatus = 'disconnected' | 'subscribing' | 'subscribed' | 'error';

export interface ChannelState {
  status: ChannelStatus;
  error: string | null;
}

export interface PresenceMember<Info = unknown> {
  id: string;
  info: Info | null;
}

const ACK_TIMEOUT_MS = 10_000;
const RETRYABLE = new Set(['rate limited', 'unavailable', 'timeout']);
const RETRY_BASE_MS = 1000;
const RETRY_MAX_MS = 30_000;
const retryDelay = (attempt: number) =>
  Math.min(RETRY_BASE_MS * 2 ** attempt, RETRY_MAX_MS) * (1 + Math.random());

type Ack = { ok: true; members?: PresenceMember[] } | { ok: false; error?: string };

function sameMembers(a: PresenceMember[], b: PresenceMember[]) {
  return a.length === b.length && a.every((m, i) => m.id === b[i].id && m.info === b[i].info);
}

export class Channel {
  state: ChannelState = { status: 'disconnected', error: null };
  members: PresenceMember[] = [];
  holders = 0;
  presenceHolders = 0;
  private generation = 0; // bumped on every (re)subscribe: stale acks are ignored
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private listeners = new Set<() => void>();
  private offs: Array<() => void> = [];

  constructor(
    readonly room: string,
    readonly connection: SharedConnection,
  ) {}

  start() {
    this.offs.push(
      this.connection.onConnect(() => {
        this.attempt = 0;
        this.subscribe();
      }),
      this.connection.onState(() => {
        if (!this.connection.isConnected) {
          clearTimeout(this.retryTimer);
          this.generation++;
          this.set({ status: 'disconnected', error: this.state.error });
        }
      }),
      this.connection.onEvent((event, data) => this.handleEvent(event, data)),
    );
    if (this.connection.isConnected) this.subscribe();
  }

  stop() {
    clearTimeout(this.retryTimer);
    for (const off of this.offs) off();
    this.offs = [];
    this.generation++;
    if (this.connection.isConnected && this.state.status === 'subscribed') {
      this.connection.socket.emit('unsubscribe', { room: this.room }, () => {});
    }
  }

  listen(fn: () => void) {
    this.listeners.add(fn);
    return () => void this.listeners.delete(fn);
  }

  /** A usePresence hook mounted: fetch the list if we are already in the room. */
  wantPresence() {
    if (++this.presenceHolders === 1 && this.state.status === 'subscribed') this.fetchPresence(this.generation);
  }

  private notify() {
    for (const fn of [...this.listeners]) fn();
  }

  private set(state: ChannelState) {
    if (state.status === this.state.status && state.error === this.state.error) return;
    this.state = state;
    this.notify();
  }

  private setMembers(members: PresenceMember[]) {
    if (sameMembers(members, this.members)) return;
    this.members = members;
    this.notify();
  }

  private ask(event: string, gen: number, then: (ack: Ack) => void) {
    // A subscribe carries the room's last offset seen: sockgate replays what was missed
    // (or says `recovery_failed`, which the hooks hand to the app to refetch).
    const offset = event === 'subscribe' ? this.connection.offsetOf(this.room) : undefined;
    this.connection.socket
      .timeout(ACK_TIMEOUT_MS)
      .emit(event, offset ? { room: this.room, offset } : { room: this.room }, (err: Error | null, ack: Ack) => {
        if (gen !== this.generation) {
          // Unmounted (or reconnected) meanwhile: undo a subscription nobody wants any more.
          if (event === 'subscribe' && !err && ack?.ok && this.holders === 0 && this.connection.isConnected) {
            this.connection.socket.emit('unsubscribe', { room: this.room }, () => {});
          }
          return;
        }
        then(err ? { ok: false, error: 'timeout' } : (ack ?? { ok: false, error: 'unavailable' }));
      });
  }

  private subscribe() {
    clearTimeout(this.retryTimer);
    const gen = ++this.generation;
    this.set({ status: 'subscribing', error: this.state.error });
    this.ask('subscribe', gen, (ack) => {
      if (ack.ok) {
        this.attempt = 0;
        this.set({ status: 'subscribed', error: null });
        if (this.presenceHolders > 0) this.fetchPresence(gen);
        return;
      }
      const error = ack.error ?? 'unavailable';
      this.set({ status: 'error', error });
      if (RETRYABLE.has(error)) {
        this.retryTimer = setTimeout(() => {
          if (gen === this.generation && this.connection.isConnected) this.subscribe();
        }, retryDelay(this.attempt++));
      }
    });
  }

  private fetchPresence(gen: number) {
    this.ask('presence', gen, (ack) => {
      // Events sent before the answer came before it (one ordered stream per socket), so the
      // answer replaces the list and later joins/leaves apply on top of it.
      if (ack.ok && Array.isArray(ack.members)) this.setMembers(ack.members);
    });
  }

  private handleEvent(event: string, data: unknown) {
    if (event !== 'presence:join' && event !== 'presence:leave') return;
    const d = (data ?? {}) as { room?: unknown; user?: PresenceMember; userId?: unknown };
    if (d.room !== this.room) return;
    if (event === 'presence:join' && d.user && typeof d.user.id === 'string') {
      const user = { id: d.user.id, info: d.user.info ?? null };
      this.setMembers([...this.members.filter((m) => m.id !== user.id), user]);
    } else if (event === 'presence:leave' && typeof d.userId === 'string') {
      this.setMembers(this.members.filter((m) => m.id !== d.userId));
    }
  }
}

const channels = new WeakMap<SharedConnection, Map<string, Channel>>();

/** Holds `room`'s channel on the client's shared connection until `release`. */
export function acquireChannel(client: SockgateClient, room: string) {
  const { connection, release: releaseConnection } = client.acquire();
  let rooms = channels.get(connection);
  if (!rooms) channels.set(connection, (rooms = new Map()));
  let channel = rooms.get(room);
  if (!channel) {
    channel = new Channel(room, connection);
    rooms.set(room, channel);
    channel.start();
  }
  channel.holders++;
  const ch = channel;
  const map = rooms;
  let released = false;
  return {
    channel: ch,
    release() {
      if (released) return;
      released = true;
      if (--ch.holders === 0) {
        map.delete(room);
        ch.stop();
      }
      releaseConnection();
    },
  };
}

// Channels and presence on the page's one connection (the one useSocket uses).
//
//   const { status, error } = useChannel('team:demo', { message: (data) => … });
//   const members = usePresence('presence:team-demo'); // [{ id, info }]
//
// sockgate lets a socket into a room when the app's `POST /api/socket/authorize` answers 2xx
// (or when the session route lists the room in `rooms`). The hooks subscribe on every connect
// (a reconnect is a new socket on the server: its subscriptions are gone), with the room's last
// offset seen so that sockgate replays what was missed meanwhile, and unsubscribe when the
// last hook for a room unmounts. Several hooks on the same room share one subscription.
//
// Socket.IO carries no room name with an event, so a channel handler gets every event of its
// name that reaches the socket (from any room it is in). Give each room its own event names,
// or put the room in the data, when one page listens to several rooms. presence:join and
// presence:leave carry their `room` and are filtered by it.
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import { acquireChannel, type Channel, type ChannelState, type PresenceMember } from './channel.js';
import type { RecoveryFailed } from './connection.js';
import { useSockgateClient } from './provider.js';

export type ChannelHandlers = Record<string, (data: any) => void>;

export interface UseChannelOptions {
  /**
   * Messages of this room were missed and cannot be replayed (its offset is older than what
   * sockgate keeps): refetch what the page shows of it.
   */
  onRecoveryFailed?: (info: RecoveryFailed) => void;
}

const DISCONNECTED: ChannelState = { status: 'disconnected', error: null };

/**
 * Subscribes to `room` on the page's connection (on connect and on every reconnect),
 * calls `handlers[event](data)` for the events that reach it, unsubscribes on unmount.
 * Handlers may change on every render: they live in a ref.
 */
export function useChannel(
  room: string | null | undefined,
  handlers: ChannelHandlers = {},
  options: UseChannelOptions = {},
): ChannelState {
  const client = useSockgateClient();
  const [state, setState] = useState<ChannelState>(DISCONNECTED);
  const latest = useRef({ handlers, options });
  useEffect(() => {
    latest.current = { handlers, options };
  });

  useEffect(() => {
    if (!room) return;
    const { channel, release } = acquireChannel(client, room);
    const sync = () => setState(channel.state);
    sync();
    const offState = channel.listen(sync);
    // The connection's event stream, repeats (an offset seen already) dropped.
    const offEvents = channel.connection.onEvent((event, data) => {
      if ((event === 'presence:join' || event === 'presence:leave')
        && (data as { room?: unknown } | null)?.room !== room) return;
      const current = latest.current.handlers;
      if (!Object.prototype.hasOwnProperty.call(current, event)) return;
      current[event]?.(data);
    });
    const offRecovery = channel.connection.onRecoveryFailed((info) => {
      if (info.room === room) latest.current.options.onRecoveryFailed?.(info);
    });
    return () => {
      offRecovery();
      offEvents();
      offState();
      release();
      setState(DISCONNECTED);
    };
  }, [room, client]);

  return state;
}

const NO_MEMBERS: PresenceMember[] = [];

/**
 * Who is in the presence room `room` (a name starting with `presence:`): one entry per user,
 * `info` being the `user` object of their session route. Subscribes like useChannel, asks
 * sockgate for the list after every (re)subscribe, and applies presence:join/leave between.
 */
export function usePresence<Info = unknown>(room: string | null | undefined): PresenceMember<Info>[] {
  const client = useSockgateClient();
  const [channel, setChannel] = useState<Channel | null>(null);
  useEffect(() => {
    if (!room) return;
    const held = acquireChannel(client, room);
    held.channel.wantPresence();
    setChannel(held.channel);
    return () => {
      held.channel.presenceHolders--;
      held.release();
      setChannel(null);
    };
  }, [room, client]);

  const subscribe = useCallback((fn: () => void) => (channel ? channel.listen(fn) : () => {}), [channel]);
  return useSyncExternalStore(
    subscribe,
    () => (channel ? channel.members : NO_MEMBERS),
    () => NO_MEMBERS,
  ) as PresenceMember<Info>[];
}

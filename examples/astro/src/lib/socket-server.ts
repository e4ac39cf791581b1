// Replaces the old src/lib/pusher.ts: same `pushNotification(userId, payload)` signature,
// but publishes through sockgate's Unix socket (SOCKGATE_SOCKET, default: sockgate's private per-user path).
// sockgate emits `notification` to every socket in room `user:{userId}`.
import { publish, pushNotification as publishToSockgate } from '@sockgate/client';

/**
 * Never throws: if sockgate is down the notification is still stored by the caller
 * and clients pick it up on their next refetch (reconnect / page load).
 * Resolves with the number of sockets that received it, or null on failure.
 */
export async function pushNotification(userId: string, payload: unknown): Promise<number | null> {
  try {
    const res = await publishToSockgate(userId, payload);
    return res.recipients ?? 0;
  } catch (err) {
    console.warn(`[socket-server] pushNotification(${userId}) failed: ${(err as Error).message}`);
    return null;
  }
}

/** Publishes `event` to every socket in `room` (a channel). Never throws, like pushNotification. */
export async function publishToRoom(room: string, event: string, data: unknown): Promise<number | null> {
  try {
    const res = await publish({ room, event, data });
    return res.recipients ?? 0;
  } catch (err) {
    console.warn(`[socket-server] publish to room ${room} failed: ${(err as Error).message}`);
    return null;
  }
}

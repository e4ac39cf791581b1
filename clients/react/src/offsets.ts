// The last offset seen per room, and the repeats to drop. Offsets are what sockgate attaches
// to a room's messages when the handshake asks for them (`auth.offsets`): each message comes
// as (payload, { offset, room }). On a reconnect the offsets go back in the handshake and in
// `subscribe {room, offset}`, and sockgate replays what was published meanwhile.

/**
 * Whether `offset` comes after `last`. Offsets are `<run>-<n>` (one sockgate) or
 * `<generation>:<n>-0` (cluster; `<generation>:<ms>-<seq>` before sequence offsets, compared
 * the same way); another run or generation counts as newer (sockgate restarted: what it sends
 * now is all news).
 */
export function isNewerOffset(offset: string, last: string | null | undefined): boolean {
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

/** The part of the Web Storage API the offsets are kept in (sessionStorage, or a test's). */
export interface OffsetStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Rooms whose last offset is kept (sockgate reads at most `channels.max_rooms_per_socket`). */
export const MAX_ROOMS = 100;
/** Messages remembered to drop repeats: they come within one reconnect, a short memory does. */
const SEEN_MAX = 1000;

/**
 * The last offset per room (`''`: a sockgate that sends no room, whose offsets are the user
 * room's), optionally kept in `storage` under `key` so that a reload resumes where the page
 * was. The room seen least recently is dropped first past MAX_ROOMS.
 */
export class Offsets {
  private last = new Map<string, string>();
  private seen = new Set<string>();
  private seenOrder: string[] = [];

  constructor(
    private readonly storage?: OffsetStorage,
    private readonly key = 'sockgate:offsets',
  ) {
    if (!storage) return;
    try {
      const saved: unknown = JSON.parse(storage.getItem(key) ?? '{}');
      if (saved && typeof saved === 'object') {
        for (const [room, offset] of Object.entries(saved)) {
          if (room && typeof offset === 'string') this.last.set(room, offset);
        }
      }
    } catch {
      // Unreadable (another format, storage denied): start without offsets, as without storage.
    }
  }

  /** The last offset seen in `room`, if any. */
  get(room: string): string | undefined {
    return this.last.get(room);
  }

  /** The handshake's `auth`: `offsets` per named room, `offset` for an older sockgate. */
  auth(): { offset: string | null; offsets: Record<string, string> } {
    const offsets: Record<string, string> = {};
    for (const [room, offset] of this.last) if (room) offsets[room] = offset;
    return { offset: this.last.get('') ?? null, offsets };
  }

  /**
   * Records a message's (room, offset). Returns false for a repeat (seen already: in cluster
   * mode a message published during a reconnect can come twice, replayed then live).
   */
  see(room: string, offset: string): boolean {
    const key = `${room}\n${offset}`;
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    this.seenOrder.push(key);
    if (this.seenOrder.length > SEEN_MAX) this.seen.delete(this.seenOrder.shift() as string);
    if (isNewerOffset(offset, this.last.get(room))) {
      this.last.delete(room); // re-inserted last: the oldest room is dropped first
      this.last.set(room, offset);
      if (this.last.size > MAX_ROOMS) this.last.delete(this.last.keys().next().value as string);
      // The unnamed room ('') is an older sockgate's, whose offsets do not outlive its run.
      if (room) this.save();
    }
    return true;
  }

  private save() {
    if (!this.storage) return;
    try {
      this.storage.setItem(this.key, JSON.stringify(this.auth().offsets));
    } catch {
      // Quota or privacy mode: the offsets stay in memory, a reload refetches instead.
    }
  }
}

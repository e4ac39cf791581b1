import type { Agent } from 'node:http';

/** `$XDG_RUNTIME_DIR/sockgate/sockgate.sock`, else `/tmp/sockgate-<uid>/sockgate.sock` (sockgate's own default). */
export declare function defaultSocketPath(env?: NodeJS.ProcessEnv, uid?: number): string;
export declare const DEFAULT_SOCKET_PATH: string;

/** Exactly one target: userId, userIds, room or broadcast. */
export type PublishMessage = {
  event: string;
  data?: unknown;
} & (
  | { userId: string | number; userIds?: never; room?: never; broadcast?: never }
  | { userIds: Array<string | number>; userId?: never; room?: never; broadcast?: never }
  | { room: string; userId?: never; userIds?: never; broadcast?: never }
  | { broadcast: true; userId?: never; userIds?: never; room?: never }
);

export interface PublishResult { ok: true; recipients: number }
export interface PublishBatchResult { ok: true; messages: number; recipients?: number }
export interface DisconnectResult { ok: true; disconnected: number }
/** What figures cover: this instance, every instance, or the instances that answered in time. */
export type Scope = 'local' | 'cluster' | 'partial';

export interface UserStatus {
  userId: string;
  online: boolean;
  sockets: number;
  /** "local": this instance only; "cluster": every instance (Redis); "partial": not every
   * instance answered within cluster.request_timeout_ms (see `unanswered`). */
  scope?: Scope;
  /** With scope "partial": how many instances did not answer in time. */
  unanswered?: number;
  /** The channels (rooms other than user:{id}) the user's sockets are in. */
  rooms?: string[];
}

/** One user in a presence room. `info` is the session route's `user` object (or null). */
export interface PresenceMember<Info = unknown> {
  id: string;
  info: Info | null;
}

/** GET /rooms/{room} */
export interface RoomStatus<Info = unknown> {
  room: string;
  /** Sockets in the room. */
  sockets: number;
  /** Distinct users in the room. */
  users: number;
  /** Presence rooms only (names starting with a `channels.presence_prefixes` entry, e.g. `presence:`). */
  members?: Array<PresenceMember<Info>>;
  scope: Scope;
  /** With scope "partial": how many instances did not answer in time. */
  unanswered?: number;
}

export interface ClientOptions {
  /** Default: $SOCKGATE_SOCKET or defaultSocketPath() */
  socketPath?: string;
  /** Per-request timeout, default 5000 ms. */
  timeoutMs?: number;
  /**
   * How long a call may wait in all after `503` + `Retry-After` answers (a cluster instance
   * too far behind; nothing of the request was kept) before failing with that 503. Default
   * 5000 ms; 0 = fail at the first.
   */
  busyRetryMs?: number;
  /** Custom http.Agent (default: a private keep-alive agent). */
  agent?: Agent;
}

export interface SockgateClient {
  readonly socketPath: string;
  readonly timeoutMs: number;
  readonly agent: Agent;
  publish(msg: PublishMessage): Promise<PublishResult>;
  publishBatch(msgs: PublishMessage[]): Promise<PublishBatchResult>;
  disconnectUser(id: string | number): Promise<DisconnectResult>;
  userStatus(id: string | number): Promise<UserStatus>;
  /** GET /rooms/{room}: how many sockets and users are in a room (and who, for a presence room). */
  room<Info = unknown>(room: string): Promise<RoomStatus<Info>>;
  /** The members of a presence room ([] for a room that is not one). */
  presence<Info = unknown>(room: string): Promise<Array<PresenceMember<Info>>>;
  stats(): Promise<Record<string, unknown>>;
  health(): Promise<{ ok: true }>;
  close(): void;
}

export declare class SockgateError extends Error {
  /** ENOENT/ECONNREFUSED (not running), SOCKGATE_TIMEOUT, SOCKGATE_HTTP_ERROR, SOCKGATE_BAD_RESPONSE, SOCKGATE_CLOSED, ... */
  code?: string;
  /** HTTP status for 4xx/5xx answers. */
  status?: number;
  /** The server's error text for 4xx/5xx answers. */
  error?: string;
  body?: unknown;
  socketPath?: string;
}

export declare function createClient(options?: ClientOptions): SockgateClient;
export declare function getDefaultClient(): SockgateClient;
export declare function closeDefaultClient(): void;
export declare function publish(msg: PublishMessage): Promise<PublishResult>;
export declare function publishBatch(msgs: PublishMessage[]): Promise<PublishBatchResult>;
export declare function disconnectUser(id: string | number): Promise<DisconnectResult>;
export declare function userStatus(id: string | number): Promise<UserStatus>;
export declare function room<Info = unknown>(room: string): Promise<RoomStatus<Info>>;
export declare function presence<Info = unknown>(room: string): Promise<Array<PresenceMember<Info>>>;
/** publish({ userId, event: 'notification', data: payload }) */
export declare function pushNotification(userId: string | number, payload: unknown): Promise<PublishResult>;

/**
 * Whether a sockgate webhook is genuine: `signatureHeader` (`X-Sockgate-Signature`,
 * `sha256=<hex>`) is the HMAC-SHA256 of the exact raw `body` under `secret`
 * (`webhooks.secret`), compared in constant time.
 */
export declare function verifyWebhook(
  body: string | Buffer | Uint8Array,
  signatureHeader: string | string[] | undefined | null,
  secret: string | Buffer,
): boolean;

/** One event of a webhook batch (`{"events": [...]}`). */
export interface WebhookEvent {
  /** Unique per event, identical on every retry: deduplicate on it. */
  id: string;
  name: 'user.online' | 'user.offline';
  userId: string;
  /** Unix time in milliseconds when sockgate decided the event. */
  at: number;
}

declare const _default: {
  verifyWebhook: typeof verifyWebhook;
  createClient: typeof createClient;
  getDefaultClient: typeof getDefaultClient;
  closeDefaultClient: typeof closeDefaultClient;
  publish: typeof publish;
  publishBatch: typeof publishBatch;
  disconnectUser: typeof disconnectUser;
  userStatus: typeof userStatus;
  room: typeof room;
  presence: typeof presence;
  pushNotification: typeof pushNotification;
  SockgateError: typeof SockgateError;
};
export default _default;

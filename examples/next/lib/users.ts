// The demo's two users. (Imported by browser code too: no server-only imports here.)
export const USERS = ['alice', 'bob'] as const;
export type UserId = (typeof USERS)[number];

export function isUser(id: unknown): id is UserId {
  return typeof id === 'string' && (USERS as readonly string[]).includes(id);
}

export function displayName(id: string): string {
  return id.charAt(0).toUpperCase() + id.slice(1);
}

// The logged-in user of the request being served, from the `sid` cookie.
import { cookies } from 'next/headers';
import { getSessionUser, SESSION_COOKIE } from './store';
import type { UserId } from './users';

export async function currentUser(): Promise<UserId | null> {
  return getSessionUser((await cookies()).get(SESSION_COOKIE)?.value);
}

export function json(body: unknown, status = 200): Response {
  return Response.json(body, { status, headers: { 'cache-control': 'no-store' } });
}

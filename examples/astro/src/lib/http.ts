import type { AstroCookies } from 'astro';
import { getSessionUser, SESSION_COOKIE, type UserId } from './store';

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers },
  });
}

export function currentUser(cookies: AstroCookies): UserId | null {
  return getSessionUser(cookies.get(SESSION_COOKIE)?.value);
}

/** Form posts get redirects, API callers (JSON) get JSON. */
export function wantsJson(request: Request): boolean {
  const type = request.headers.get('content-type') ?? '';
  const accept = request.headers.get('accept') ?? '';
  return type.includes('application/json') || (accept.includes('application/json') && !accept.includes('text/html'));
}

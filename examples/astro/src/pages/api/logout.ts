import type { APIRoute } from 'astro';
import { json, wantsJson } from '../../lib/http';
import { destroySession, SESSION_COOKIE } from '../../lib/store';

export const POST: APIRoute = ({ request, cookies, redirect }) => {
  destroySession(cookies.get(SESSION_COOKIE)?.value);
  cookies.delete(SESSION_COOKIE, { path: '/' });
  return wantsJson(request) ? json({ ok: true }) : redirect('/login', 303);
};

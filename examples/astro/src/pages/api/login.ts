import type { APIRoute } from 'astro';
import { json, wantsJson } from '../../lib/http';
import { createSession, destroySession, isUser, SESSION_COOKIE } from '../../lib/store';

const WEEK = 60 * 60 * 24 * 7;

// Accepts the login form (userId=alice) or JSON {"userId":"alice"}.
export const POST: APIRoute = async ({ request, cookies, redirect, url }) => {
  const asJson = wantsJson(request);
  let userId: unknown;
  try {
    if ((request.headers.get('content-type') ?? '').includes('application/json')) {
      userId = ((await request.json()) as { userId?: unknown })?.userId;
    } else {
      userId = (await request.formData()).get('userId');
    }
  } catch {
    userId = undefined;
  }
  if (!isUser(userId)) {
    return asJson ? json({ error: 'unknown user' }, 400) : redirect('/login?error=unknown-user', 303);
  }

  destroySession(cookies.get(SESSION_COOKIE)?.value);
  cookies.set(SESSION_COOKIE, createSession(userId), {
    path: '/',
    httpOnly: true,
    sameSite: 'lax',
    secure: url.protocol === 'https:',
    maxAge: WEEK,
  });
  return asJson ? json({ ok: true, userId }) : redirect('/', 303);
};

'use server';
// Server actions: the login form, the logout button and the "Notify" buttons call these.
// Next.js sends them as POSTs to the page's own URL; sockgate proxies them like any request.
import { cookies, headers } from 'next/headers';
import { redirect } from 'next/navigation';
import { pushNotification } from '@sockgate/client';
import { currentUser } from '../lib/session';
import { addNotification, createSession, destroySession, SESSION_COOKIE } from '../lib/store';
import { isUser } from '../lib/users';

const WEEK = 60 * 60 * 24 * 7;

export async function login(formData: FormData): Promise<void> {
  const userId = formData.get('userId');
  if (!isUser(userId)) redirect('/login?error=unknown-user');
  const jar = await cookies();
  destroySession(jar.get(SESSION_COOKIE)?.value);
  jar.set(SESSION_COOKIE, createSession(userId), {
    path: '/',
    httpOnly: true,
    sameSite: 'lax',
    // sockgate says how the browser came in (the app itself only ever sees plain HTTP).
    secure: (await headers()).get('x-forwarded-proto') === 'https',
    maxAge: WEEK,
  });
  redirect('/');
}

export async function logout(): Promise<void> {
  const jar = await cookies();
  destroySession(jar.get(SESSION_COOKIE)?.value);
  jar.delete(SESSION_COOKIE);
  redirect('/login');
}

export type NotifyResult = { ok: true; title: string; recipients: number | null } | { ok: false; error: string };

/** Stores a notification for `userId`, then pushes it live through sockgate. */
export async function notify(userId: string, title: string): Promise<NotifyResult> {
  if (!(await currentUser())) return { ok: false, error: 'unauthorized' };
  if (!isUser(userId)) return { ok: false, error: 'unknown user' };
  const clean = title.trim().slice(0, 200);
  if (!clean) return { ok: false, error: 'title is required' };
  const notification = addNotification(userId, clean, `sent at ${new Date().toLocaleTimeString('en-GB')}`);
  // Stored first; a sockgate outage only means no live push (recipients: null): the bell
  // refetches the stored list when its socket reconnects. The publish socket is
  // $SOCKGATE_SOCKET, which sockgate sets for the app it starts.
  try {
    const { recipients } = await pushNotification(userId, notification);
    return { ok: true, title: clean, recipients };
  } catch (err) {
    console.warn(`pushNotification(${userId}) failed: ${(err as Error).message}`);
    return { ok: true, title: clean, recipients: null };
  }
}

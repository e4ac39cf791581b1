import type { Metadata } from 'next';
import Link from 'next/link';
import { login } from '../actions';
import { currentUser } from '../../lib/session';
import { displayName, USERS } from '../../lib/users';

export const metadata: Metadata = { title: 'Log in' };

// A server component: the form posts to the `login` server action (it works before any
// JavaScript has loaded, too), which sets the `sid` cookie and redirects to /.
export default async function LoginPage({ searchParams }: { searchParams: Promise<{ error?: string }> }) {
  const me = await currentUser();
  const { error } = await searchParams;
  return (
    <>
      <h1>Log in</h1>
      {me && (
        <p className="muted">
          You are logged in as {displayName(me)}. <Link href="/">Go to notifications</Link>
        </p>
      )}
      {error && <p role="alert" data-testid="login-error">Unknown user, pick one below.</p>}
      <form action={login} className="row">
        {USERS.map((id) => (
          <button key={id} type="submit" name="userId" value={id} data-testid={`login-${id}`}>
            Log in as {displayName(id)}
          </button>
        ))}
      </form>
    </>
  );
}

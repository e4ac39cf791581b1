import Link from 'next/link';
import { redirect } from 'next/navigation';
import type { ReactNode } from 'react';
import { logout } from '../actions';
import NotificationBell from '../../components/NotificationBell';
import Realtime from '../../components/Realtime';
import WhoIsOnline from '../../components/WhoIsOnline';
import { currentUser } from '../../lib/session';
import { listNotifications } from '../../lib/store';
import { displayName } from '../../lib/users';

// The logged-in part of the app. A layout stays mounted while the user moves between its
// pages (RSC navigation: only the page's payload is fetched), so the realtime parts placed
// here keep their one socket across navigations.
export default async function AppLayout({ children }: { children: ReactNode }) {
  const me = await currentUser();
  if (!me) redirect('/login');
  return (
    <>
      <header>
        <h1>
          Hi, <span data-testid="current-user">{displayName(me)}</span>
        </h1>
        <form action={logout}>
          <button type="submit" data-testid="logout">
            Log out
          </button>
        </form>
      </header>
      <nav>
        <Link href="/" data-testid="nav-home">
          Notify
        </Link>
        <Link href="/history" data-testid="nav-history">
          History
        </Link>
      </nav>
      {children}
      <Realtime>
        <NotificationBell userId={me} initialNotifications={listNotifications(me)} />
        <WhoIsOnline userId={me} />
      </Realtime>
    </>
  );
}

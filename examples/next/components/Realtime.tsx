'use client';
// The page's one connection to sockgate, shared by the bell and who-is-online below it.
// @sockgate/react has no bundler-specific code (no 'use client' of its own): this file is
// where the server-rendered layout hands over to the browser.
import type { ReactNode } from 'react';
import { SockgateProvider } from '@sockgate/react';

export default function Realtime({ children }: { children: ReactNode }) {
  return <SockgateProvider>{children}</SockgateProvider>;
}

// The page's one sockgate client. Each island (NotificationBell, WhoIsOnline, TeamPanel) is
// its own React root: they share one Socket.IO connection by giving their <SockgateProvider>
// this same client. Creating it opens nothing (no socket until a hook mounts), so importing
// it during server rendering is harmless.
import { createSockgate } from '@sockgate/react';

// ?transport=polling forces long-polling only (handy for tests).
const forcePolling =
  typeof window !== 'undefined' && new URLSearchParams(window.location.search).get('transport') === 'polling';

// persistOffsets: each room's last offset is kept in sessionStorage, so a reload (or a visit
// to another page and back, in the same tab) resumes: sockgate replays what was published
// meanwhile, team messages included, which the app does not store.
export const sockgate = createSockgate({
  persistOffsets: true,
  ...(forcePolling ? { socketOptions: { transports: ['polling'] } } : {}),
});

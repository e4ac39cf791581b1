// The demo's one team: everybody logged in is in it. (Imported by browser code too: no
// server-only imports here.)

/** Events published to it reach the Team panel (useChannel). */
export const TEAM_ROOM = 'team:demo';
/** Its who-is-online list (usePresence). */
export const TEAM_PRESENCE_ROOM = 'presence:team-demo';
/** The event name of a team message. */
export const TEAM_EVENT = 'message';

/** The rooms a logged-in user may subscribe to (POST /api/socket/authorize). */
export const SUBSCRIBABLE_ROOMS: readonly string[] = [TEAM_ROOM, TEAM_PRESENCE_ROOM];

export interface TeamMessage {
  id: string;
  from: string;
  text: string;
  at: string;
}


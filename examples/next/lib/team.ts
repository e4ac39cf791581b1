// The demo's one team: everybody logged in is in it. (Imported by browser code too: no
// server-only imports here.)

/** Its who-is-online list (usePresence). */
export const TEAM_PRESENCE_ROOM = 'presence:team-demo';

/** The rooms a logged-in user may subscribe to (POST /api/socket/authorize). */
export const SUBSCRIBABLE_ROOMS: readonly string[] = [TEAM_PRESENCE_ROOM];

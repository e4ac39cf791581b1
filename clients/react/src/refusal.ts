/**
 * What `useSocket` reports as `error`: `unauthorized` (no session the app accepts: retrying
 * cannot help, so nothing retries until the page reloads or the user changes), `unavailable`
 * (the session route could not answer: retried with backoff), or the transport's message.
 */
export type SocketError = 'unauthorized' | 'unavailable' | (string & {});

/** The HTTP status sockgate refused the handshake with, when the transport tells it. */
function refusedWith(description: unknown): number | null {
  // Long-polling (browsers and Node) reports the status itself.
  if (typeof description === 'number') return description;
  // Node's websocket transport (the `ws` package) names it in its error; a browser's
  // WebSocket never exposes the status.
  const message = (description as { message?: unknown } | null)?.message;
  const m = typeof message === 'string' ? /Unexpected server response: (\d+)/.exec(message) : null;
  return m ? Number(m[1]) : null;
}

/**
 * Why the connection was refused. sockgate refuses a handshake whose session the app does not
 * accept with HTTP 401 (503 when the session route cannot answer) before any socket exists.
 */
export function refusal(err: Error & { description?: unknown }): SocketError {
  const status = refusedWith(err.description);
  if (status === 401) return 'unauthorized';
  if (status === 503) return 'unavailable';
  return err.message;
}

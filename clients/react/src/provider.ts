// Which client the hooks use: the nearest <SockgateProvider>'s, else the page's default one.
import { createContext, createElement, useContext, useState, type ReactNode } from 'react';
import { defaultClient, SockgateClient, type SockgateOptions } from './connection.js';

const SockgateContext = createContext<SockgateClient | null>(null);

export interface SockgateProviderProps {
  /**
   * The client to share (`createSockgate(options)`, made once at module level): islands or
   * roots that render separately (Astro islands, several React roots) share one connection
   * by giving each provider the same client.
   */
  client?: SockgateClient;
  /** Options for a client of this provider's own, when no `client` is given (read once). */
  options?: SockgateOptions;
  children?: ReactNode;
}

/**
 * Gives the hooks below it their client. Without `client`, the provider makes its own on
 * first render and keeps it for its lifetime, so nothing is shared with other providers (a
 * test that renders its own provider starts from a clean state). Making a client opens
 * nothing: strict mode's double render and double mount cost no extra connection.
 */
export function SockgateProvider({ client, options, children }: SockgateProviderProps) {
  const [own] = useState(() => client ?? new SockgateClient(options));
  return createElement(SockgateContext.Provider, { value: client ?? own }, children);
}

/** The client the hooks of this component use. */
export function useSockgateClient(): SockgateClient {
  return useContext(SockgateContext) ?? defaultClient();
}

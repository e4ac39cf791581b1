// @sockgate/react: React hooks for sockgate. See README.md.
export { useSocket, type UseSocketOptions, type UseSocketResult } from './useSocket.js';
export { useChannel, usePresence, type ChannelHandlers, type UseChannelOptions } from './useChannel.js';
export type { ChannelState, ChannelStatus, PresenceMember } from './channel.js';
export { SockgateProvider, useSockgateClient, type SockgateProviderProps } from './provider.js';
export {
  acquireConnection,
  createSockgate,
  defaultClient,
  SharedConnection,
  SockgateClient,
  type RecoveryFailed,
  type SockgateOptions,
} from './connection.js';
export { isNewerOffset, Offsets, MAX_ROOMS, type OffsetStorage } from './offsets.js';
export { refusal, type SocketError } from './refusal.js';

import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** @type {import('next').NextConfig} */
const nextConfig = {
  poweredByHeader: false,
  // @sockgate/client is a local package (file:../../clients/node) outside this folder: the
  // repository root is the root Next.js traces files from (and it stops guessing one from
  // the lockfiles it finds on the way up).
  outputFileTracingRoot: path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..'),
};

export default nextConfig;

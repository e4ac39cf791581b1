// @ts-check
import { defineConfig } from 'astro/config';
import node from '@astrojs/node';
import react from '@astrojs/react';

// Astro >= 5.14 only trusts the Host header if it matches security.allowedDomains;
// otherwise the request URL becomes http://localhost and the built-in origin check
// rejects every same-origin <form method="post"> (login/logout) with a 403.
// sockgate preserves Host, so list the hostnames the browser uses. Extra ones
// come from ALLOWED_HOSTS (comma-separated) at build time, e.g. ALLOWED_HOSTS=app.example.com
const allowedHosts = ['localhost', '127.0.0.1', ...(process.env.ALLOWED_HOSTS ?? '').split(',')]
  .map((h) => h.trim())
  .filter(Boolean);

export default defineConfig({
  output: 'server',
  adapter: node({ mode: 'standalone' }),
  integrations: [react()],
  security: {
    allowedDomains: allowedHosts.map((hostname) => ({ hostname })),
  },
});

// The app behind sockgate in the benchmark: the SSR page and the session route, nothing else.
//   PORT=4321 node bench/node-app/app.mjs
import http from 'node:http';
import { appHandler } from './page.mjs';

const PORT = Number(process.env.PORT || 4321);
const server = http.createServer(appHandler);
server.keepAliveTimeout = 5000;
server.listen(PORT, '127.0.0.1', () => console.log(`node-app listening on ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));

// Node's fetch (undici's, pinned in ../package.json) through sbx with undici's ProxyAgent, as an
// SDK in a sandbox would use it. Trusts only the CA file it is given.
//
//   node fetch_through_proxy.mjs '{"ca": "/path/ca.pem", "requests": [
//     {"proxy": "http://[user:token@]127.0.0.1:PORT", "url": "https://...", "method": "POST",
//      "headers": {...}, "body": "..."}]}'
//
// Prints a JSON array with {status, headers, body} per request; exits 1 with the error otherwise.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';

const spec = JSON.parse(process.argv[2]);
const ca = readFileSync(spec.ca, 'utf8');
const agents = new Map();
const agentFor = (proxy) => {
  if (!agents.has(proxy)) {
    // A user:token in the proxy URL becomes Proxy-Authorization: Basic on the CONNECT.
    agents.set(proxy, new ProxyAgent({ uri: proxy, requestTls: { ca } }));
  }
  return agents.get(proxy);
};

const results = [];
try {
  for (const r of spec.requests) {
    const response = await fetch(r.url, {
      method: r.method ?? 'GET',
      headers: r.headers ?? {},
      body: r.body,
      dispatcher: agentFor(r.proxy),
      signal: AbortSignal.timeout(15000),
    });
    results.push({
      status: response.status,
      headers: Object.fromEntries(response.headers),
      body: await response.text(),
    });
  }
} catch (error) {
  process.stderr.write(`fetch failed: ${error?.stack ?? error}\ncause: ${error?.cause?.stack ?? error?.cause}\n`);
  process.exit(1);
} finally {
  await Promise.all([...agents.values()].map((agent) => agent.close()));
}
process.stdout.write(JSON.stringify(results));

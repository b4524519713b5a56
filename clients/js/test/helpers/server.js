// Starts the real chatd binary for the integration and browser tests, and
// mints tokens for it. The binary comes from CHATD_BIN (the Rust test
// `tests/clients.rs` passes the one cargo built).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';

/** Secret of every test server. */
export const SECRET = 'clients-test-secret';
/** Longest wait for anything a test expects; tests fail rather than hang. */
export const DEADLINE_MS = 15_000;

/** The chatd binary, or null when none is known (the test then skips). */
export function chatdBinary() {
  const bin = process.env.CHATD_BIN;
  return bin && existsSync(bin) ? bin : null;
}

/** An HS256 JWT for `user`, signed with `secret`. */
export function mintToken(user, { secret = SECRET, name, ttlSeconds = 3600 } = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, iat: now, exp: now + ttlSeconds };
  if (name) claims.username = name;
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', secret).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/** How long a start may take before the test fails (a start takes tens of ms). */
const START_DEADLINE_MS = 10_000;

/**
 * Starts chatd on 127.0.0.1 (`port` 0 picks a free one) and resolves once it
 * listens; rejects when no "listening" line comes within 10 s. Its log goes
 * to this process's stderr.
 */
export async function startServer({ port = 0, env = {} } = {}) {
  return startOnce(port, env);
}

async function startOnce(port, env) {
  const bin = chatdBinary();
  if (!bin) throw new Error('CHATD_BIN is not set to a chatd binary');
  const child = spawn(bin, [], {
    env: {
      PATH: process.env.PATH ?? '',
      JWT_SECRET: SECRET,
      PORT: String(port),
      HOST: '127.0.0.1',
      // No CORES and no PIN_CORES: the defaults, as the README starts it.
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  let addr;
  try {
    addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening" line within ${START_DEADLINE_MS} ms`)), START_DEADLINE_MS);
      lines.on('line', (line) => {
        const m = /^chatd listening on (\S+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`chatd exited before listening (code ${code}, signal ${signal})`));
      });
    });
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    throw err;
  }
  const actualPort = Number(addr.split(':').pop());
  return {
    addr,
    port: actualPort,
    wsUrl: `ws://${addr}/ws`,
    httpUrl: `http://${addr}`,
    child,
    exited,
    /** SIGKILL (a crash, no drain) and wait for the exit. */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    /** SIGTERM (the server's drain closes every connection with 1001) and wait for the exit. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** GET `path` with an optional bearer token; resolves with status and parsed JSON body. */
export async function getJson(server, path, token) {
  const res = await fetch(`${server.httpUrl}${path}`, {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

/**
 * Polls `check` until it returns a truthy value or the deadline passes;
 * resolves with that value, rejects with `what` on timeout.
 */
export async function until(check, what, deadlineMs = DEADLINE_MS) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

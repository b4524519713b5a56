// The demo page in headless Chromium against a server with WS_COMPRESSION=true:
// Chromium offers permessage-deflate on every WebSocket, so the page's
// connection runs compressed. Two users chat with messages longer than
// WS_COMPRESSION_MIN_BYTES; the server's metrics show the compressed copies
// it delivered.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { chatdBinary, mintToken, startServer, until } from '../helpers/server.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const skip = !chatdBinary()
  ? 'CHATD_BIN is not set to a chatd binary'
  : !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (apt-get install chromium)`
    : false;
/** Longest wait for anything on a page. */
const WAIT_MS = 20_000;

let server;
let context;
let userDataDir;
const pageErrors = [];

before(async () => {
  if (skip) return;
  // The setting under test: compression is off by default.
  server = await startServer({ env: { WS_COMPRESSION: 'true' } });
  userDataDir = mkdtempSync(join(tmpdir(), 'chatd-chromium-deflate-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await context?.close();
  await server?.kill();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

/** Opens the demo page as `user`, waits until it is connected. */
async function open(user, name) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${user}: ${err.message}`));
  await page.goto(`${server.httpUrl}/?token=${mintToken(user, { name })}&room=general`);
  await page.waitForSelector('#conn[data-state="open"]', { timeout: WAIT_MS });
  return page;
}

async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

async function sees(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('li[data-message-id] .text')].some((e) => e.textContent === t),
    text,
    { timeout: WAIT_MS },
  );
}

/** One sample of the server's /metrics. */
async function metric(name) {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : undefined;
}

test('the demo page chats over a compressed connection', { skip }, async () => {
  const alice = await open('alice', 'Alice');
  const bob = await open('bob', 'Bob');

  // What Chromium itself negotiated, from a socket of the page's origin.
  const extensions = await alice.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onopen = () => {
          resolve(ws.extensions);
          ws.close();
        };
        ws.onerror = () => reject(new Error('socket failed'));
      }),
    `${server.wsUrl}?token=${mintToken('probe')}`,
  );
  assert.equal(extensions, 'permessage-deflate; server_no_context_takeover');

  const before = await metric('chat_ws_compressed_deliveries_total');
  assert.equal(before, 0);
  const long = (who) => `${who}: ` + 'the release notes are ready, please review them before friday. '.repeat(6);
  await say(alice, long('alice'));
  await sees(bob, long('alice'));
  await sees(alice, long('alice'));
  // Chromium compresses what it sends too: the server inflates it.
  await say(bob, long('bob'));
  await sees(alice, long('bob'));
  await say(alice, 'short one');
  await sees(bob, 'short one');

  // Two long messages, each compressed once and delivered compressed to
  // both pages; the short one went plain. (The scrape is cached for a second.)
  await until(async () => (await metric('chat_ws_compressed_frames_total')) === 2, 'two compressed frames');
  assert.equal(await metric('chat_ws_compressed_deliveries_total'), 4);
  assert.deepEqual(pageErrors, []);
});

// The demo page in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core), as two users: messages both ways, the typing indicator,
// the online list, history after a reload, and a server killed and started
// again on the same port with messages typed during the outage delivered
// afterwards, once each. Saves a screenshot.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { ChatClient } from '../../src/client.js';
import { chatdBinary, mintToken, startServer } from '../helpers/server.js';
import { recordingSockets } from '../helpers/sockets.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const skip = !chatdBinary()
  ? 'CHATD_BIN is not set to a chatd binary'
  : !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (apt-get install chromium)`
    : false;
/** Longest wait for anything on a page. */
const WAIT_MS = 20_000;
/** The history test posts more than the default 30 messages a minute. */
const SERVER_ENV = { RATE_LIMIT_MAX_MESSAGES: '1000' };

let server;
let context;
let userDataDir;
const pageErrors = [];

before(async () => {
  if (skip) return;
  server = await startServer({ env: SERVER_ENV });
  userDataDir = mkdtempSync(join(tmpdir(), 'chatd-chromium-'));
  // A persistent context on a fresh profile directory: playwright passes it
  // as --user-data-dir. Each page (tab) has its own sessionStorage, so the
  // two users do not share a token.
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
    viewport: { width: 1100, height: 700 },
  });
});

after(async () => {
  await context?.close();
  await server?.kill();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

/** Opens the demo page as `user` in `room`, waits until it is connected. */
async function open(user, name, room = 'general') {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${user}: ${err.message}`));
  await page.goto(`${server.httpUrl}/?token=${mintToken(user, { name })}&room=${room}`);
  await connected(page);
  return page;
}

async function connected(page) {
  await page.waitForSelector('#conn[data-state="open"]', { timeout: WAIT_MS });
}

/** Types and sends a message from the composer. */
async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** Waits until `page` shows a delivered message with `text`. */
async function sees(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('li[data-message-id] .text')].some((e) => e.textContent === t),
    text,
    { timeout: WAIT_MS },
  );
}

/** The delivered messages on screen: [id, text], in order. */
function shown(page) {
  return page.$$eval('li[data-message-id]', (items) =>
    items.map((li) => [li.dataset.messageId, li.querySelector('.text').textContent]),
  );
}

function onlineUsers(page) {
  return page.$$eval('#online li', (items) => items.map((li) => li.dataset.user));
}

async function waitOnline(page, users) {
  await page.waitForFunction(
    (want) => [...document.querySelectorAll('#online li')].map((li) => li.dataset.user).join(',') === want,
    [...users].sort().join(','),
    { timeout: WAIT_MS },
  );
}

/** Each message once, and exactly the texts expected (in order, or as a set where the order is open). */
function assertShown(rows, expectedInOrder, who) {
  const ids = rows.map(([id]) => id);
  assert.equal(new Set(ids).size, ids.length, `${who}: a message shown twice: ${JSON.stringify(rows)}`);
  const texts = rows.map(([, t]) => t);
  assert.equal(new Set(texts).size, texts.length, `${who}: a text shown twice: ${JSON.stringify(texts)}`);
  assert.deepEqual(texts, expectedInOrder, who);
  const sorted = [...ids].sort();
  assert.deepEqual(ids, sorted, `${who}: messages out of server order`);
}

test('two users chat in the demo page through a server restart', { skip }, async () => {
  const alice = await open('alice', 'Alice');
  await waitOnline(alice, ['alice']);
  let bob = await open('bob', 'Bob');

  // The online list changes as bob arrives.
  await waitOnline(alice, ['alice', 'bob']);
  await waitOnline(bob, ['alice', 'bob']);

  // Messages both ways.
  await say(alice, 'hello bob');
  await sees(bob, 'hello bob');
  await say(bob, 'hi alice');
  await sees(alice, 'hi alice');

  // The typing indicator: bob types, alice sees it; sending clears it.
  await bob.type('#composer-input', 'typing slowly', { delay: 40 });
  await alice.waitForSelector('#typing[data-users="bob"]', { timeout: WAIT_MS });
  assert.equal(await alice.textContent('#typing'), 'Bob is typing…');
  await bob.press('#composer-input', 'Enter');
  await sees(alice, 'typing slowly');
  await alice.waitForSelector('#typing[data-users=""]', { state: 'attached', timeout: WAIT_MS });

  // The online list changes as bob leaves, and again as he comes back.
  await bob.close();
  await waitOnline(alice, ['alice']);
  bob = await open('bob', 'Bob');
  await waitOnline(alice, ['alice', 'bob']);

  // A fresh page loads the history; so does a reload.
  const before = ['hello bob', 'hi alice', 'typing slowly'];
  await sees(bob, 'typing slowly');
  assertShown(await shown(bob), before, 'bob, new page');
  await bob.reload();
  await connected(bob);
  await sees(bob, 'typing slowly');
  assertShown(await shown(bob), before, 'bob, after reload');
  assert.match(bob.url(), /\/\?room=general$/, 'the token left the address bar');

  // Kill the server. Both pages notice; what they type meanwhile is queued.
  const port = server.port;
  await server.kill();
  for (const page of [alice, bob]) {
    await page.waitForSelector('#conn[data-state="reconnecting"]', { timeout: WAIT_MS });
  }
  await say(alice, 'sent while down by alice');
  await say(bob, 'sent while down by bob');
  for (const page of [alice, bob]) {
    await page.waitForSelector('li.pending .status:text("queued")', { timeout: WAIT_MS });
  }
  assert.match(await alice.textContent('#conn'), /1 queued/);

  // Start it again on the same port: both pages recover by themselves.
  server = await startServer({ port, env: SERVER_ENV });
  for (const page of [alice, bob]) {
    await connected(page);
    await sees(page, 'sent while down by alice');
    await sees(page, 'sent while down by bob');
    await page.waitForFunction(() => document.querySelectorAll('li.pending').length === 0, null, { timeout: WAIT_MS });
  }
  await waitOnline(alice, ['alice', 'bob']);
  await say(alice, 'after the restart');
  for (const page of [alice, bob]) await sees(page, 'after the restart');

  // Nothing missing, nothing twice. The server's history started empty, so
  // the pages keep what they had; the two queued messages are stored in
  // whichever order the pages reconnected.
  const aliceRows = await shown(alice);
  const queuedOrder = aliceRows.map(([, t]) => t).filter((t) => t.startsWith('sent while down'));
  assert.equal(queuedOrder.length, 2);
  const expected = [...before, ...queuedOrder, 'after the restart'];
  assertShown(aliceRows, expected, 'alice');
  assertShown(await shown(bob), expected, 'bob');
  assert.deepEqual(
    (await shown(bob)).map(([id]) => id),
    aliceRows.map(([id]) => id),
    'both pages show the same messages',
  );

  const dir = process.env.SCREENSHOT_DIR ?? tmpdir();
  const path = join(dir, 'chatd-demo.png');
  await alice.screenshot({ path });
  console.log(`screenshot: ${path}`);
  assert.deepEqual(pageErrors, []);
});

test('scrolling up loads older history pages', { skip }, async () => {
  // 70 messages in a room, posted by a Node client.
  const poster = new ChatClient({
    url: server.wsUrl,
    token: mintToken('poster'),
    roomId: 'busy',
    WebSocket: recordingSockets().Socket,
  });
  poster.connect();
  const texts = Array.from({ length: 70 }, (_, i) => `old ${String(i + 1).padStart(2, '0')}`);
  await Promise.all(texts.map((t) => poster.send(t, 'busy')));
  poster.close();

  const page = await open('carol', 'Carol', 'busy');
  await sees(page, 'old 70');
  // The first page is the latest 50.
  assert.deepEqual((await shown(page)).map(([, t]) => t), texts.slice(20));
  assert.equal(await page.textContent('#history-status'), 'scroll up for older messages');
  await page.$eval('#messages', (box) => {
    box.scrollTop = 0;
  });
  await sees(page, 'old 01');
  await page.waitForSelector('#history-status:text("beginning of the room")', { timeout: WAIT_MS });
  assertShown(await shown(page), texts, 'carol');
  // The view stayed where it was: the first message of the old page is
  // still near the top, not the newly loaded ones scrolled past.
  const top = await page.$eval('#messages', (box) => box.scrollTop);
  assert.ok(top > 0, `scrollTop ${top}`);
  assert.deepEqual(pageErrors, []);
});

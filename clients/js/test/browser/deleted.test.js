// The demo page in headless Chromium when an operator deletes a message: the
// message leaves the screen of a page that shows it, and a page opened
// afterwards never shows it (it is gone from the history).

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { SECRET, chatdBinary, mintToken, startServer } from '../helpers/server.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const skip = !chatdBinary()
  ? 'CHATD_BIN is not set to a chatd binary'
  : !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (apt-get install chromium)`
    : false;
/** Longest wait for anything on a page. */
const WAIT_MS = 20_000;

let server;
let browser;
let userDataDir;
const pageErrors = [];

before(async () => {
  if (skip) return;
  server = await startServer();
  userDataDir = mkdtempSync(join(tmpdir(), 'chatd-chromium-'));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  await server?.kill();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

/** An HS256 token with the admin role (the operator API). */
function adminToken() {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'root', role: 'admin', iat: now, exp: now + 3600 })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

async function open(user, room) {
  const page = await browser.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${user}: ${err.message}`));
  await page.goto(`${server.httpUrl}/?token=${mintToken(user)}&room=${room}`);
  await page.waitForSelector('#conn[data-state="open"]', { timeout: WAIT_MS });
  return page;
}

async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** The texts of the delivered messages on screen, in order. */
function texts(page) {
  return page.$$eval('li[data-message-id] .text', (items) => items.map((e) => e.textContent));
}

async function showsExactly(page, want) {
  await page.waitForFunction(
    (w) => [...document.querySelectorAll('li[data-message-id] .text')].map((e) => e.textContent).join('\n') === w,
    want.join('\n'),
    { timeout: WAIT_MS },
  );
}

test('a message an operator deletes leaves the demo page', { skip }, async () => {
  const room = 'deleted';
  const alice = await open('alice', room);
  await say(alice, 'keep this');
  await say(alice, 'delete this');
  await say(alice, 'and this stays');
  await showsExactly(alice, ['keep this', 'delete this', 'and this stays']);
  const id = await alice.$eval('li[data-message-id]:nth-child(2)', (li) => li.dataset.messageId);
  const res = await fetch(`${server.httpUrl}/api/chats/rooms/${room}/messages/${id}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${adminToken()}` },
  });
  assert.equal(res.status, 204);
  await showsExactly(alice, ['keep this', 'and this stays']);
  // A page opened afterwards loads the history without it.
  const bob = await open('bob', room);
  await showsExactly(bob, ['keep this', 'and this stays']);
  assert.deepEqual(await texts(bob), await texts(alice));
  await bob.screenshot({ path: join(process.env.SCREENSHOT_DIR ?? tmpdir(), 'demo-deleted.png') });
  assert.deepEqual(pageErrors, []);
});

// What the browser tests share: where the rookery binary and Chromium are, starting and stopping
// servers, scratch directories, bounded waits in a page, and the pass/fail ending with its
// overall time limit and clean-up.
//
// The binary is $ROOKERY_BIN, else $CARGO_TARGET_DIR/debug/rookery, else target/debug/rookery.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The rookery binary under test. */
export const BINARY = path.resolve(process.env.ROOKERY_BIN
  ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'), 'debug', 'rookery'));
/** Debian's Chromium, unless $CHROMIUM says otherwise. */
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** The longest any single condition may take, in ms. */
export const WAIT = 20_000;

const servers = new Set();
const scratch = [];

/** A `console.log` that prefixes the test's name and the time. */
export function logger(name) {
  return (...args) => console.log(`[${name} ${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** A fresh temporary directory, removed when the test ends. */
export function scratchDir(prefix) {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

/**
 * Starts `rookery serve` on `listen` with `dataDir` and `extra` arguments; resolves with
 * {child, addr} once it announces its address.
 */
export function startServer(dataDir, listen, extra = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(BINARY, ['serve', '--listen', listen, '--data-dir', dataDir, ...extra], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    servers.add(child);
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`rookery did not announce its address within ${WAIT} ms`));
    }, WAIT);
    child.on('exit', (code, signal) => {
      servers.delete(child);
      clearTimeout(timer);
      reject(new Error(`rookery exited before listening (code ${code}, signal ${signal})`));
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/^rookery listening on http:\/\/(\S+)$/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, addr: m[1] });
      }
    });
  });
}

/** Starts the server again on `addr`, retrying while the port is still being released. */
export async function restartServer(dataDir, addr, extra = [], log = () => {}) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    try {
      return await startServer(dataDir, addr, extra);
    } catch (e) {
      if (Date.now() > deadline) throw e;
      log(`restart failed (${e.message}); trying again`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Kills `child` with SIGKILL; resolves once it has exited. */
export function kill9(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/** Stops `child` with SIGTERM, or SIGKILL if it has not exited within WAIT. */
export async function stopServer(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), WAIT));
  if ((await Promise.race([exited, timeout])) === 'timeout') await kill9(child);
}

/**
 * Waits until `fn(arg)` is truthy in `page`, within WAIT; on timeout, throws with `what` and
 * what `state()` (evaluated in the page) reports.
 */
export async function waitInPage(page, what, fn, arg, state) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });
  } catch (e) {
    const seen = await page.evaluate(state).catch(() => ({}));
    const who = page.who ? `${page.who}: ` : '';
    throw new Error(`${who}timed out waiting until ${what}: ${e.message}\npage state: ${JSON.stringify(seen)}`);
  }
}

/** Kills every server still running and removes the scratch directories. */
function cleanup() {
  for (const child of servers) child.kill('SIGKILL');
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
}

/**
 * Runs `main` within `overallMs`, cleans up, prints "1 passed, 0 failed" or the failure, and
 * exits 0 or 1.
 */
export async function runTest(name, main, overallMs) {
  const overall = setTimeout(() => {
    console.error(`${name}: the test took longer than ${overallMs} ms`);
    cleanup();
    process.exit(1);
  }, overallMs);
  try {
    await main();
    clearTimeout(overall);
    cleanup();
    console.log('1 passed, 0 failed');
    process.exit(0);
  } catch (e) {
    clearTimeout(overall);
    console.error(`${name} FAILED: ${e.stack ?? e}`);
    cleanup();
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
}

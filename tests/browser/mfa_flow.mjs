// Real-browser second-factor flow against a running gatehouse (started by tests/browser.rs).
//
// Headless Debian Chromium (/usr/bin/chromium) driven by playwright-core. A doctor (a role
// that must use a second factor) without one signs in on the doctor portal and is sent to
// enrolment: the page shows the QR code (inline SVG) and the secret; the first code (computed
// here with node's crypto, RFC 6238) enables it, the recovery codes are shown, and the
// doctor reaches the dashboard. After logging out, signing in again goes through the second
// step page (/login/mfa): a wrong code is refused on the page, the next code lets them in.
// Console errors and Content-Security-Policy violations fail the run.
//
// Environment:
//   GATEHOUSE_URL     base URL of the gateway, e.g. http://127.0.0.1:8080
//   DOCTOR_EMAIL      a seeded doctor's email (no second factor yet)
//   DOCTOR_PASSWORD   that doctor's password
//   ARTIFACTS_DIR     where screenshots go (default test-artifacts/browser)
//
// Exit code 0 on success; 1 with a "FAIL: ..." line on a failed check; 2 on bad usage;
// 3 when the whole run exceeds its bound. Each wait is at most 15 s, the run at most 90 s.

import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

const STEP_TIMEOUT_MS = 15_000;
const RUN_TIMEOUT_MS = 90_000;
const CHROMIUM = "/usr/bin/chromium";

function env(name) {
  const v = process.env[name];
  if (v === undefined || v.trim() === "") {
    console.error(`usage: ${name} must be set (see the header of mfa_flow.mjs)`);
    process.exit(2);
  }
  return v;
}

const BASE = env("GATEHOUSE_URL").replace(/\/+$/, "");
const EMAIL = env("DOCTOR_EMAIL");
const PASSWORD = env("DOCTOR_PASSWORD");
const ARTIFACTS = resolve(process.env.ARTIFACTS_DIR || "test-artifacts/browser");
mkdirSync(ARTIFACTS, { recursive: true });

const started = Date.now();
let step = "start";
let browser = null;
let page = null;
const problems = [];

class CheckFailed extends Error {}

function check(cond, message) {
  if (!cond) throw new CheckFailed(message);
}

function log(message) {
  const t = ((Date.now() - started) / 1000).toFixed(2);
  console.log(`[${t.padStart(6)} s] ${message}`);
}

function begin(name) {
  step = name;
  log(`step: ${name}`);
}

async function screenshot(file) {
  const path = join(ARTIFACTS, file);
  await page.screenshot({ path, fullPage: true, timeout: STEP_TIMEOUT_MS });
  log(`screenshot ${path}`);
}

function checkNoProblems(where) {
  check(
    problems.length === 0,
    `${problems.length} browser error(s) by ${where}:\n  - ${problems.join("\n  - ")}`,
  );
}

/** RFC 4648 base32 (no padding) to bytes. */
function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of text.replace(/=+$/, "").toUpperCase()) {
    const i = alphabet.indexOf(ch);
    if (i < 0) throw new CheckFailed(`not base32: ${JSON.stringify(text)}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** The RFC 6238 code (HMAC-SHA1, 30 s, 6 digits) of `secret` at time step `counter`. */
function totp(secret, counter) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const h = createHmac("sha1", secret).update(msg).digest();
  const o = h[19] & 0x0f;
  const bin = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(bin % 1_000_000).padStart(6, "0");
}

/** The current time step, once it has at least 5 s left (so the gateway agrees on it). */
async function settledStep() {
  while (Math.floor(Date.now() / 1000) % 30 > 25) {
    await new Promise((r) => setTimeout(r, 250));
  }
  return Math.floor(Date.now() / 1000 / 30);
}

const watchdog = setTimeout(async () => {
  console.error(`FAIL: the browser test exceeded ${RUN_TIMEOUT_MS / 1000} s (at step "${step}")`);
  try {
    if (page) await page.screenshot({ path: join(ARTIFACTS, "mfa-99-timeout.png"), timeout: 2_000 });
  } catch {
    // best effort
  }
  process.exit(3);
}, RUN_TIMEOUT_MS);

async function signIn() {
  await page.goto(`${BASE}/login?portal=doctor`, { waitUntil: "load" });
  await page.locator("#login-form").waitFor({ state: "visible" });
  const action = await page.locator("#login-form").getAttribute("action");
  check(action === "/api/web/auth/doctor/login", `login form posts to ${action}, not the doctor portal`);
  await page.locator("#email").fill(EMAIL);
  await page.locator("#password").fill(PASSWORD);
  await page.locator("#login-submit").click();
}

async function sessionCookie() {
  const cookies = await page.context().cookies(BASE);
  return cookies.find((c) => c.name === "predicthealth_session");
}

async function run() {
  begin("launch Chromium");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: STEP_TIMEOUT_MS,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "es-ES" });
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(
        `Content Security Policy violation: ${e.violatedDirective} blocked ${e.blockedURI || "(inline)"}`,
      );
    });
  });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  page.on("console", (msg) => {
    const text = msg.text();
    const csp = /Content[- ]Security[- ]Policy/i.test(text);
    if (msg.type() === "error" || csp) {
      problems.push(`${csp ? "CSP" : "console error"} on ${new URL(page.url()).pathname}: ${text}`);
    }
  });
  page.on("pageerror", (err) => problems.push(`uncaught exception: ${err.message}`));

  begin("sign in: sent to enrolment");
  await signIn();
  await page.waitForURL((u) => u.pathname === "/account/mfa");
  check(!(await sessionCookie()), "a session cookie before the second factor was enrolled");
  const svg = page.locator("#mfa-qr svg");
  await svg.waitFor({ state: "visible" });
  const box = await svg.boundingBox();
  check(box && box.width >= 100, `the QR code is not drawn (${JSON.stringify(box)})`);
  const secretText = ((await page.locator("#mfa-secret").textContent()) || "").trim();
  check(/^[A-Z2-7]{32}$/.test(secretText), `no base32 secret on the page: ${JSON.stringify(secretText)}`);
  const secret = base32Decode(secretText);
  await screenshot("mfa-01-enrol.png");
  checkNoProblems("the enrolment page");

  begin("confirm with the first code");
  const enrolStep = await settledStep();
  await page.locator("#mfa-code").fill(totp(secret, enrolStep));
  await page.locator("#mfa-submit").click();
  await page.locator("#mfa-recovery").waitFor({ state: "visible" });
  const codes = await page.locator("#mfa-recovery code").allTextContents();
  check(codes.length === 10, `${codes.length} recovery codes shown, not 10`);
  check((await sessionCookie())?.httpOnly === true, "no HttpOnly session cookie after enrolling");
  await screenshot("mfa-02-recovery-codes.png");
  await page.locator("#mfa-continue").click();
  await page.waitForURL((u) => u.pathname === "/doctor/dashboard");
  checkNoProblems("the dashboard after enrolling");

  begin("log out, sign in again: the second step");
  await page.goto(`${BASE}/logout`, { waitUntil: "load" });
  await page.waitForURL((u) => u.pathname === "/login");
  check(!(await sessionCookie()), "still a session cookie after logging out");
  await signIn();
  await page.waitForURL((u) => u.pathname === "/login/mfa");
  await page.locator("#mfa-form").waitFor({ state: "visible" });
  check(!(await sessionCookie()), "a session cookie before the second step");
  await screenshot("mfa-03-second-step.png");

  begin("a wrong code is refused");
  const s = await settledStep();
  const right = totp(secret, s + 1);
  await page.locator("#mfa-code").fill(right === "000000" ? "000001" : "000000");
  await page.locator("#mfa-submit").click();
  await page.waitForURL((u) => u.pathname === "/login/mfa" && u.searchParams.get("error") === "invalid");
  await page.locator("#mfa-error").waitFor({ state: "visible" });
  check(!(await sessionCookie()), "a session cookie after a wrong code");

  begin("the next code lets the doctor in");
  // The enrolment used the current step; a code is accepted once, so the next one (one step
  // of skew) is what a doctor would type half a minute later.
  await page.locator("#mfa-code").fill(right);
  await page.locator("#mfa-submit").click();
  await page.waitForURL((u) => u.pathname === "/doctor/dashboard");
  check((await sessionCookie())?.httpOnly === true, "no session cookie after the second step");
  await screenshot("mfa-04-dashboard.png");
  checkNoProblems("the end");
}

let code = 0;
try {
  await run();
  log(`PASS: second-factor flow in ${((Date.now() - started) / 1000).toFixed(2)} s`);
} catch (e) {
  code = 1;
  const message = e instanceof CheckFailed ? e.message : (e && e.stack) || String(e);
  console.error(`FAIL at step "${step}": ${message}`);
  if (problems.length > 0) console.error(`browser errors seen:\n  - ${problems.join("\n  - ")}`);
  if (page) {
    try {
      await page.screenshot({ path: join(ARTIFACTS, "mfa-99-failure.png"), fullPage: true, timeout: 5_000 });
      console.error(`failure screenshot: ${join(ARTIFACTS, "mfa-99-failure.png")} (page ${page.url()})`);
    } catch {
      // best effort
    }
  }
} finally {
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
  }
  clearTimeout(watchdog);
}
process.exit(code);

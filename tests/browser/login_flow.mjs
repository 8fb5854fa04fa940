// Real-browser login flow against a running gatehouse (started by tests/browser.rs).
//
// Headless Debian Chromium (/usr/bin/chromium) driven by playwright-core: open `/`, follow
// the patient link to the login page, sign in, see the dashboard with the patient's name and
// the fake patients upstream's data, log out, and get sent to /login when opening the
// dashboard again; then register a new patient through /register (a common password first,
// refused at its field), get the notice on the login page, and sign in with the new account.
// Console errors and Content-Security-Policy violations fail the run.
//
// Environment:
//   GATEHOUSE_URL     base URL of the gateway, e.g. http://127.0.0.1:8080
//   PATIENT_EMAIL     a seeded patient's email
//   PATIENT_PASSWORD  that patient's password
//   PATIENT_NAME      the patient's display name (must appear in #welcome)
//   EXPECT_TEXT       a string from the fake upstream's JSON (must appear in the data sections)
//   NEW_EMAIL         an email no account has yet (registered by the run)
//   NEW_NAME          the new account's name
//   NEW_PASSWORD      the new account's password (passes the password policy)
//   ARTIFACTS_DIR     where screenshots go (default test-artifacts/browser)
//
// Exit code 0 on success; 1 with a "FAIL: ..." line on a failed check; 2 on bad usage;
// 3 when the whole run exceeds its bound. Each wait is at most 15 s, the run at most 90 s.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

const STEP_TIMEOUT_MS = 15_000;
const RUN_TIMEOUT_MS = 90_000;
const CHROMIUM = "/usr/bin/chromium";

function env(name) {
  const v = process.env[name];
  if (v === undefined || v.trim() === "") {
    console.error(`usage: ${name} must be set (see the header of login_flow.mjs)`);
    process.exit(2);
  }
  return v;
}

const BASE = env("GATEHOUSE_URL").replace(/\/+$/, "");
const EMAIL = env("PATIENT_EMAIL");
const PASSWORD = env("PATIENT_PASSWORD");
const NAME = env("PATIENT_NAME");
const EXPECT_TEXT = env("EXPECT_TEXT");
const NEW_EMAIL = env("NEW_EMAIL");
const NEW_NAME = env("NEW_NAME");
const NEW_PASSWORD = env("NEW_PASSWORD");
const ARTIFACTS = resolve(process.env.ARTIFACTS_DIR || "test-artifacts/browser");
mkdirSync(ARTIFACTS, { recursive: true });

const started = Date.now();
let step = "start";
let browser = null;
let page = null;
/** Console errors, page errors and CSP violations seen on any page. */
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

function pathOf(url) {
  const u = new URL(url);
  return u.pathname;
}

/** Fails when any console error, page error or CSP violation was seen so far. */
function checkNoProblems(where) {
  check(
    problems.length === 0,
    `${problems.length} browser error(s) by ${where}:\n  - ${problems.join("\n  - ")}`,
  );
}

// The whole run is bounded: a hung browser or gateway must not hang `cargo test`.
const watchdog = setTimeout(async () => {
  console.error(`FAIL: the browser test exceeded ${RUN_TIMEOUT_MS / 1000} s (at step "${step}")`);
  try {
    if (page) await page.screenshot({ path: join(ARTIFACTS, "99-timeout.png"), timeout: 2_000 });
  } catch {
    // best effort
  }
  process.exit(3);
}, RUN_TIMEOUT_MS);

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
  log(`Chromium ${browser.version()}`);
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    locale: "es-ES",
  });
  // CSP violations also reach the console as errors; this makes sure each one is reported
  // with its directive even when Chromium words the console message differently.
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
      const loc = msg.location();
      const where = loc && loc.url ? ` (${loc.url})` : "";
      problems.push(`${csp ? "CSP" : "console error"} on ${pathOf(page.url())}: ${text}${where}`);
    }
  });
  page.on("pageerror", (err) => {
    problems.push(`uncaught exception on ${pathOf(page.url())}: ${err.message}`);
  });

  begin("open /");
  const landing = await page.goto(`${BASE}/`, { waitUntil: "load" });
  check(landing && landing.status() === 200, `GET / answered ${landing && landing.status()}`);
  const title = await page.title();
  check(title.includes("PredictHealth"), `landing title ${JSON.stringify(title)} lacks PredictHealth`);
  const csp = landing.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'self'"), `landing page has no CSP header (got ${JSON.stringify(csp)})`);
  await screenshot("01-landing.png");
  checkNoProblems("the landing page");

  begin("follow the patient link to the login page");
  const patientLink = page.getByRole("link", { name: "Entrar como paciente" });
  await patientLink.click();
  await page.waitForURL((u) => u.pathname === "/login");
  await page.locator("#login-form").waitFor({ state: "visible" });
  const action = await page.locator("#login-form").getAttribute("action");
  check(action === "/api/web/auth/patient/login", `login form posts to ${action}, not the patient portal`);
  const csrf = await page.locator("#login-form input[name=csrf_token]").inputValue();
  check(/^[0-9a-f]{64}$/.test(csrf), `login form has no masked CSRF token (got ${JSON.stringify(csrf)})`);

  begin("fill in the credentials");
  await page.locator("#email").fill(EMAIL);
  await page.locator("#password").fill(PASSWORD);
  await screenshot("02-login.png");
  checkNoProblems("the login page");

  begin("submit the login form");
  await page.locator("#login-submit").click();
  try {
    await page.waitForURL((u) => u.pathname === "/patient/dashboard");
  } catch (e) {
    const error = await page.locator("#login-error").textContent().catch(() => null);
    throw new CheckFailed(
      `after submitting the login form the browser is at ${page.url()}, not /patient/dashboard` +
        (error ? ` (login error shown: ${error.trim()})` : "") +
        ` (${e.message.split("\n")[0]})`,
    );
  }

  begin("check the dashboard");
  const welcome = page.locator("#welcome");
  await welcome.waitFor({ state: "visible" });
  const welcomeText = (await welcome.textContent()) || "";
  check(welcomeText.includes(NAME), `#welcome says ${JSON.stringify(welcomeText.trim())}, not the name ${JSON.stringify(NAME)}`);
  for (const id of ["source-profile", "source-appointments"]) {
    const section = page.locator(`#${id}`);
    await section.waitFor({ state: "visible" });
    const text = (await section.textContent()) || "";
    check(
      (await section.locator(".unavailable").count()) === 0,
      `#${id} says the data source is unavailable: ${JSON.stringify(text.replace(/\s+/g, " ").trim())}`,
    );
    check(
      text.includes(EXPECT_TEXT),
      `#${id} does not contain ${JSON.stringify(EXPECT_TEXT)}: ${JSON.stringify(text.replace(/\s+/g, " ").trim())}`,
    );
  }
  const cookies = await page.context().cookies(BASE);
  check(
    cookies.some((c) => c.name === "predicthealth_session" && c.httpOnly),
    `no HttpOnly session cookie after login (cookies: ${cookies.map((c) => c.name).join(", ")})`,
  );
  await screenshot("03-dashboard.png");
  checkNoProblems("the dashboard");

  begin("log out");
  await page.getByRole("link", { name: "Cerrar sesión" }).click();
  await page.waitForURL((u) => u.pathname === "/login");
  await page.locator("#login-form").waitFor({ state: "visible" });
  const flash = (await page.locator("#flash").textContent().catch(() => "")) || "";
  check(flash.includes("Has cerrado sesión"), `no logged-out notice on /login (flash: ${JSON.stringify(flash.trim())})`);
  const after = await page.context().cookies(BASE);
  check(
    !after.some((c) => c.name === "predicthealth_session"),
    "the session cookie is still there after logging out",
  );
  await screenshot("04-logged-out.png");
  checkNoProblems("the login page after logging out");

  begin("open the dashboard again");
  await page.goto(`${BASE}/patient/dashboard`, { waitUntil: "load" });
  const final = new URL(page.url());
  check(
    final.pathname === "/login" && final.searchParams.get("next") === "/patient/dashboard",
    `after logging out, /patient/dashboard ended at ${page.url()}, not /login?next=/patient/dashboard`,
  );
  await page.locator("#login-form").waitFor({ state: "visible" });
  const next = await page.locator("#login-form input[name=next]").inputValue();
  check(next === "/patient/dashboard", `the login form does not carry next=/patient/dashboard (got ${JSON.stringify(next)})`);
  await screenshot("05-dashboard-after-logout.png");
  checkNoProblems("the login page with next");

  begin("follow the login page's link to the registration page");
  await page.locator("#register-link").click();
  await page.waitForURL((u) => u.pathname === "/register");
  const form = page.locator("#register-form");
  await form.waitFor({ state: "visible" });
  check((await form.getAttribute("action")) === "/register", "the registration form does not post to /register");
  const regCsrf = await page.locator("#register-form input[name=csrf_token]").inputValue();
  check(/^[0-9a-f]{64}$/.test(regCsrf), `registration form has no masked CSRF token (got ${JSON.stringify(regCsrf)})`);
  const heading = (await page.locator("#register-title").textContent()) || "";
  check(heading.includes("Crear una cuenta"), `registration page heading ${JSON.stringify(heading.trim())}`);

  begin("register with a common password");
  await page.locator("#name").fill(NEW_NAME);
  await page.locator("#email").fill(NEW_EMAIL);
  await page.locator("#password").fill("Password1234");
  await screenshot("06-register.png");
  await page.locator("#register-submit").click();
  const fieldError = page.locator("#error-password");
  await fieldError.waitFor({ state: "visible" });
  const fieldText = (await fieldError.textContent()) || "";
  check(fieldText.includes("demasiado común"), `the password error says ${JSON.stringify(fieldText.trim())}`);
  check(
    (await page.locator("#email").inputValue()) === NEW_EMAIL,
    "the form lost the email after the refusal",
  );
  check((await page.locator("#password").inputValue()) === "", "the refused password was sent back");
  await screenshot("07-register-refused.png");
  // The form comes back with the status of the refusal (400), which Chromium reports on the
  // console as a failed load of the document: that one line is expected, nothing else.
  const refusedLoad = /status of 400 \(Bad Request\) \(.*\/register\)$/;
  check(problems.filter((p) => refusedLoad.test(p)).length === 1, "the refused form did not answer 400");
  problems.splice(0, problems.length, ...problems.filter((p) => !refusedLoad.test(p)));
  checkNoProblems("the refused registration");

  begin("register with a good password");
  await page.locator("#password").fill(NEW_PASSWORD);
  await page.locator("#register-submit").click();
  try {
    await page.waitForURL((u) => u.pathname === "/login");
  } catch (e) {
    const error = await page.locator(".field-error, #register-error").first().textContent().catch(() => null);
    throw new CheckFailed(
      `after registering the browser is at ${page.url()}, not /login` +
        (error ? ` (error shown: ${error.trim()})` : "") +
        ` (${e.message.split("\n")[0]})`,
    );
  }
  const notice = (await page.locator("#flash").textContent().catch(() => "")) || "";
  check(notice.includes("Tu cuenta está creada"), `no registration notice on /login (flash: ${JSON.stringify(notice.trim())})`);
  check(
    !(await page.context().cookies(BASE)).some((c) => c.name === "predicthealth_session"),
    "registering signed the browser in",
  );
  await screenshot("08-registered.png");

  begin("sign in with the new account");
  check(
    (await page.locator("#login-form").getAttribute("action")) === "/api/web/auth/patient/login",
    "the login page after registering is not the patient portal",
  );
  await page.locator("#email").fill(NEW_EMAIL);
  await page.locator("#password").fill(NEW_PASSWORD);
  await page.locator("#login-submit").click();
  await page.waitForURL((u) => u.pathname === "/patient/dashboard");
  const newWelcome = page.locator("#welcome");
  await newWelcome.waitFor({ state: "visible" });
  const newWelcomeText = (await newWelcome.textContent()) || "";
  check(
    newWelcomeText.includes(NEW_NAME),
    `#welcome says ${JSON.stringify(newWelcomeText.trim())}, not the new name ${JSON.stringify(NEW_NAME)}`,
  );
  await screenshot("09-new-patient-dashboard.png");

  begin("check the browser console");
  checkNoProblems("the end");
}

let code = 0;
try {
  await run();
  log(`PASS: login flow in ${((Date.now() - started) / 1000).toFixed(2)} s; screenshots in ${ARTIFACTS}`);
} catch (e) {
  code = 1;
  const message = e instanceof CheckFailed ? e.message : (e && e.stack) || String(e);
  console.error(`FAIL at step "${step}": ${message}`);
  if (problems.length > 0 && !(e instanceof CheckFailed && message.includes("browser error"))) {
    console.error(`browser errors seen:\n  - ${problems.join("\n  - ")}`);
  }
  if (page) {
    try {
      await page.screenshot({ path: join(ARTIFACTS, "99-failure.png"), fullPage: true, timeout: 5_000 });
      console.error(`failure screenshot: ${join(ARTIFACTS, "99-failure.png")} (page ${page.url()})`);
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

// End-to-end tests of the dashboard in headless Chromium (Debian's, through playwright-core)
// against a real `lapse serve` started here: a temp data dir, an admin key, two tenants with
// keys, process environments. Run by scripts/test-ui.sh:
//   LAPSE_BIN=target/debug/lapse node ui/e2e/run.mjs
// Screenshots of every page go to target/ui-artefacts/ (LAPSE_UI_ARTEFACTS to change).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const bin = resolve(process.env.LAPSE_BIN ?? join(root, 'target/debug/lapse'));
const artefacts = resolve(process.env.LAPSE_UI_ARTEFACTS ?? join(root, 'target/ui-artefacts'));
const browserPath = process.env.LAPSE_CHROMIUM ?? '/usr/bin/chromium';
const ADMIN = 'admin-key-for-the-dashboard-tests-0123456789';
const XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">';

let failures = 0;
const results = [];
async function test(name, f) {
  const started = Date.now();
  try {
    const outcome = await f();
    results.push(`${outcome === 'skipped' ? 'skip' : 'ok  '} ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures++;
    results.push(`FAIL ${name}: ${e?.stack ?? e}`);
  }
  console.log(results[results.length - 1]);
}
function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
}

// ---- the server ----
const dir = mkdtempSync(join(tmpdir(), 'lapse-ui-e2e-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const log = [];
const server = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dir, 'data'), '--docker', 'off',
  '--aws', 'off', '--sweep-interval', '1s', '--stop-grace', '1s', '--rate-limit', '0'], {
  env: { ...process.env, LAPSE_ADMIN_KEY: ADMIN, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  stdio: ['ignore', 'pipe', 'pipe'],
});
server.stdout.on('data', (d) => log.push(String(d)));
server.stderr.on('data', (d) => log.push(String(d)));
let exited = false;
server.on('exit', () => { exited = true; });

async function api(method, path, body, key = ADMIN, headers = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: res.status, json, headers: res.headers };
}

async function until(what, f, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

let browser;
try {
  await until('the server to answer /healthz', async () => !exited && (await fetch(`${base}/healthz`)).ok);
  mkdirSync(artefacts, { recursive: true });

  // Two tenants, a key each, an environment each (t1's with a hostile label).
  const keys = {};
  for (const t of ['t1', 't2']) {
    assert((await api('POST', '/v1/admin/tenants', { name: t, quota: { providers: ['process'], environments: 50, vcpu: 50, mem_mb: 262144 } })).status === 201, `tenant ${t}`);
    const k = await api('POST', `/v1/admin/tenants/${t}/keys`);
    assert(k.status === 201, `key of ${t}`);
    keys[t] = k.json.key;
  }
  const create = async (key, name, labels = {}) => {
    const r = await api('POST', '/v1/environments', {
      name, owner: `${name}-owner`, labels, ttl: '1h', spec: { provider: 'process', cmd: ['sleep', '3600'] },
    }, key);
    assert(r.status === 202 || r.status === 201, `create ${name}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json.id;
  };
  const alpha = await create(keys.t1, 'alpha', { xss: XSS, course: 'cs101' });
  const beta = await create(keys.t2, 'beta');
  for (const id of [alpha, beta]) {
    await until(`${id} running`, async () => (await api('GET', `/v1/environments/${id}`)).json.state === 'running');
  }

  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });

  // A browser context per person; console errors and page errors are collected. Network
  // refusals of routes other parts of issue 13 build (webhooks, the terminal) are expected
  // on a server without them and are not counted.
  const expected404 = /\/v1\/webhooks|\/terminal/;
  async function session(key, viewport = { width: 1400, height: 900 }) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    const errors = [];
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      if (/Failed to load resource/.test(m.text()) && expected404.test(m.location()?.url ?? '')) return;
      errors.push(`${m.text()} @ ${m.location()?.url ?? ''}`);
    });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('dialog', (d) => { errors.push(`a browser dialog opened: ${d.message()}`); void d.dismiss(); });
    await page.goto(`${base}/ui/`);
    await page.fill('#key', key);
    await page.click('button[type=submit]');
    await page.waitForSelector('table.fleet');
    return { context, page, errors };
  }
  const row = (page, id) => page.locator(`tr[data-id="${id}"]`);

  const t1 = await session(keys.t1);

  await test('the table shows a created environment, and a tenant sees only its own', async () => {
    await row(t1.page, alpha).waitFor();
    assert(await row(t1.page, alpha).locator('.badge').textContent() === 'running', 'alpha runs');
    assert(await row(t1.page, beta).count() === 0, "t2's environment is not in t1's table");
    await t1.page.screenshot({ path: join(artefacts, 'fleet-tenant.png'), fullPage: true });
  });

  // The refusals below are provoked on purpose, in a page of their own, so the console of
  // the pages under test stays clean.
  const probe = await session(keys.t1);
  await test("a tenant's cookie cannot fetch another tenant's environment through /v1", async () => {
    const got = await probe.page.evaluate(async (id) => {
      const one = await fetch(`/v1/environments/${id}`);
      const list = await (await fetch('/v1/environments?limit=1000')).json();
      return { status: one.status, ids: list.environments.map((e) => e.id) };
    }, beta);
    assert(got.status === 404, `GET of another tenant's environment: ${got.status}`);
    assert(!got.ids.includes(beta) && got.ids.includes(alpha), `list: ${got.ids}`);
  });

  await test('a label holding <script> shows as text and runs nothing', async () => {
    const chip = row(t1.page, alpha).locator('.chip', { hasText: 'xss=' });
    assert((await chip.textContent()) === `xss=${XSS}`, `label text: ${await chip.textContent()}`);
    assert(await t1.page.evaluate(() => window.__xss) === undefined, 'the label ran');
    assert(await t1.page.locator('main script, main img').count() === 0, 'the label became markup');
  });

  await test('a cookie-authenticated POST without the CSRF header is 403; with it, it passes', async () => {
    const got = await probe.page.evaluate(async (id) => {
      const bare = await fetch(`/v1/environments/${id}/extend`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"by":"1m"}',
      });
      const s = await (await fetch('/ui/session')).json();
      const ok = await fetch(`/v1/environments/${id}/extend`, {
        method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Lapse-CSRF': s.csrf }, body: '{"by":"1m"}',
      });
      return { bare: bare.status, body: await bare.json(), ok: ok.status };
    }, alpha);
    assert(got.bare === 403 && got.body.error.code === 'forbidden', `without: ${JSON.stringify(got)}`);
    assert(got.ok === 202, `with the token: ${got.ok}`);
    // Another site's Origin is refused even with the token (from outside the browser).
    const cookie = (await probe.context.cookies()).find((c) => c.name === 'lapse_ui');
    assert(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', `cookie flags: ${JSON.stringify(cookie)}`);
    const s = await api('GET', '/ui/session', null, null, { Cookie: `lapse_ui=${cookie.value}` });
    const cross = await api('POST', `/v1/environments/${alpha}/extend`, { by: '1m' }, null,
      { Cookie: `lapse_ui=${cookie.value}`, 'X-Lapse-CSRF': s.json.csrf, Origin: 'http://evil.example' });
    assert(cross.status === 403, `cross-origin: ${cross.status}`);
  });

  await probe.context.close();

  await test('extend from the UI moves the countdown', async () => {
    const cell = row(t1.page, alpha).locator('td.countdown');
    const before = Date.parse(await cell.getAttribute('data-expires'));
    const textBefore = await cell.textContent();
    await row(t1.page, alpha).locator('button[data-action=extend]').click();
    await t1.page.selectOption('#extend-by', '4h');
    await t1.page.click('dialog button[type=submit]');
    await until('the countdown to move', async () => Date.parse(await cell.getAttribute('data-expires')) - before > 3.9 * 3600e3);
    const textAfter = await cell.textContent();
    assert(textAfter !== textBefore && /^[45]h/.test(textAfter), `countdown ${textBefore} → ${textAfter}`);
  });

  await test('a list read that answers after a live update does not undo it', async () => {
    // The list is read at once and answered 1.5 s later; meanwhile a change arrives live.
    // Without the merge, the late answer put back the old row (stop 22's failure).
    let fetched;
    const read = new Promise((r) => { fetched = r; });
    const late = async (route) => {
      const response = await route.fetch();
      fetched();
      await new Promise((r) => setTimeout(r, 1500));
      await route.fulfill({ response });
    };
    const isList = (url) => url.pathname === '/v1/environments';
    await t1.page.route(isList, late);
    try {
      const answered = t1.page.waitForResponse((r) => isList(new URL(r.url())));
      await t1.page.click('button:text("Refresh")');
      await read;
      const ext = await api('POST', `/v1/environments/${alpha}/extend`, { by: '2h' }, keys.t1);
      assert(ext.status === 202, `extend: ${ext.status}`);
      const cell = row(t1.page, alpha).locator('td.countdown');
      await until('the live update', async () => (await cell.getAttribute('data-expires')) === ext.json.expires_at);
      await answered;
      await t1.page.waitForTimeout(300);
      const now = await cell.getAttribute('data-expires');
      assert(now === ext.json.expires_at, `after the late list: ${now}, want ${ext.json.expires_at}`);
    } finally {
      await t1.page.unroute(isList, late);
    }
  });

  await test('stop from the UI changes the badge without a reload', async () => {
    await t1.page.evaluate(() => { window.__noReload = true; });
    await row(t1.page, alpha).locator('button[data-action=stop]').click();
    await until('the badge to say stopped', async () => (await row(t1.page, alpha).locator('.badge').textContent()) === 'stopped');
    assert(await t1.page.evaluate(() => window.__noReload) === true, 'the page reloaded');
    await t1.page.screenshot({ path: join(artefacts, 'fleet-after-stop.png'), fullPage: true });
  });

  await test('create from the form shows the environment; delete asks first; Escape closes the dialog', async () => {
    await t1.page.click('#new-env');
    await t1.page.waitForSelector('dialog[open] #c-owner');
    await t1.page.screenshot({ path: join(artefacts, 'create-dialog.png') });
    for (let i = 0; i < 30; i++) await t1.page.keyboard.press('Tab');
    assert(await t1.page.evaluate(() => !!document.activeElement?.closest('dialog[open]')), 'Tab stays inside the dialog');
    await t1.page.fill('#c-name', 'from-ui');
    await t1.page.fill('#c-owner', 'ui-owner');
    await t1.page.selectOption('#c-provider', 'process');
    await t1.page.fill('#c-cmd', 'sleep 600');
    await t1.page.fill('#c-labels', 'made=ui');
    await t1.page.click('dialog button[type=submit]');
    const made = t1.page.locator('tr', { has: t1.page.locator('a', { hasText: 'from-ui' }) });
    await made.waitFor();
    await until('from-ui running', async () => (await made.locator('.badge').textContent()) === 'running');
    await made.locator('button[data-action=delete]').click();
    await t1.page.waitForSelector('dialog[open]');
    await t1.page.keyboard.press('Escape');
    await until('the dialog to close', async () => (await t1.page.locator('dialog[open]').count()) === 0);
    assert((await made.locator('.badge').textContent()) === 'running', 'Escape deleted nothing');
    await made.locator('button[data-action=delete]').click();
    await t1.page.click('dialog[open] button.danger');
    // allTextContents never waits: the row may leave the table between two reads, and a
    // waiting read would then sit out its own 30 s timeout past this wait's end.
    await until('from-ui to leave the table', async () => {
      const badges = await made.locator('.badge').allTextContents();
      return badges.length === 0 || badges.some((b) => ['deleting', 'deleted'].includes(b));
    });
  });

  await test('a phone-sized screen shows the fleet as cards', async () => {
    const phone = await session(keys.t1, { width: 390, height: 844 });
    await row(phone.page, alpha).waitFor();
    // One in-page step: live updates re-render the table, and a row resolved in one round trip
    // may be detached by the next (a detached row's computed display is ''). Stop 21's failure.
    const display = await until('a connected row to be styled', () => phone.page.evaluate((id) => {
      const tr = document.querySelector(`tr[data-id="${id}"]`);
      return tr && tr.isConnected ? getComputedStyle(tr).display : null;
    }, alpha));
    assert(display === 'block', `row display ${display}`);
    await phone.page.screenshot({ path: join(artefacts, 'fleet-phone.png'), fullPage: true });
    assert(phone.errors.length === 0, `console errors: ${phone.errors.join('\n')}`);
    await phone.context.close();
  });

  await test('a running environment with a pre-expiry warning shows a banner', async () => {
    // The warnings are another part of issue 13: their field is added to the API's answer here.
    const warned = await session(keys.t1);
    await warned.page.route('**/v1/environments/*', async (route) => {
      if (route.request().url().endsWith('/watch')) return route.continue();
      const res = await route.fetch();
      const env = await res.json();
      if (env && env.id) env.warned_at = new Date().toISOString();
      await route.fulfill({ response: res, json: env });
    });
    const other = await create(keys.t1, 'gamma');
    await until('gamma running', async () => (await api('GET', `/v1/environments/${other}`)).json.state === 'running');
    await warned.page.goto(`${base}/ui/#/env/${other}`);
    const banner = warned.page.locator('.banner[role=alert]');
    await banner.waitFor();
    assert(/Expiring soon: gamma ends in \d+m/.test(await banner.textContent()), await banner.textContent());
    await warned.page.screenshot({ path: join(artefacts, 'banner.png') });
    assert(warned.errors.length === 0, warned.errors.join('\n'));
    await warned.context.close();
  });

  await test("the tenant's pages render without console errors", async () => {
    for (const hash of [`#/env/${alpha}`, '#/pools', '#/queues', '#/providers', '#/status', '#/usage', '#/webhooks', '#/']) {
      await t1.page.goto(`${base}/ui/${hash}`);
      await t1.page.waitForSelector('main h1');
      await t1.page.waitForTimeout(300);
    }
    await t1.page.screenshot({ path: join(artefacts, 'pools-tenant.png') });
  });

  await test('the tenant session saw no console errors', async () => {
    assert(t1.errors.length === 0, t1.errors.join('\n'));
  });

  const admin = await session(ADMIN);
  await test('the admin sees every tenant; every page renders without console errors', async () => {
    await row(admin.page, alpha).waitFor();
    await row(admin.page, beta).waitFor();
    await admin.page.screenshot({ path: join(artefacts, 'fleet-admin.png'), fullPage: true });
    for (const [hash, name, ready] of [
      [`#/env/${beta}`, 'environment', 'dl.details dd'], ['#/pools', 'pools', 'h1'], ['#/queues', 'queues', 'h1'],
      ['#/providers', 'providers', 'table'], ['#/status', 'tasks', 'table'], ['#/usage', 'usage', '.chart .uplot'],
      ['#/webhooks', 'webhooks', 'h1'],
    ]) {
      await admin.page.goto(`${base}/ui/${hash}`);
      await admin.page.waitForSelector(ready);
      await admin.page.waitForTimeout(300);
      await admin.page.screenshot({ path: join(artefacts, `${name}.png`), fullPage: true });
    }
    assert(admin.errors.length === 0, admin.errors.join('\n'));
  });

  await test('create from a pool claims a warm member', async () => {
    const put = await api('PUT', '/v1/pools/warm', { spec: { provider: 'process', cmd: ['sleep', '3600'] }, min: 1 });
    assert(put.status === 200 || put.status === 201, `pool: ${put.status} ${JSON.stringify(put.json)}`);
    await until('a warm member', async () => (await api('GET', '/v1/pools/warm')).json.warm >= 1);
    await admin.page.goto(`${base}/ui/#/`);
    await admin.page.waitForSelector('table.fleet');
    await admin.page.click('#new-env');
    await admin.page.waitForSelector('dialog[open] #c-pool');
    await admin.page.selectOption('#c-pool', 'warm');
    await admin.page.fill('#c-owner', 'pool-owner');
    await admin.page.click('dialog button[type=submit]');
    await until('the claimed environment', async () => {
      const list = (await api('GET', '/v1/environments?owner=pool-owner')).json.environments;
      return list.length === 1 && list[0].state === 'running';
    });
    await admin.page.locator('tr', { hasText: 'pool-owner' }).waitFor();
    assert(admin.errors.length === 0, admin.errors.join('\n'));
  });

  await test('the terminal runs echo and shows its output', async () => {
    const probe = await api('GET', `/v1/environments/${beta}/terminal?cols=80&rows=24`);
    if (probe.status === 404 && probe.json?.error?.message === 'no such route') {
      console.log('skip: the terminal route (GET /v1/environments/{id}/terminal) is not on this branch');
      return 'skipped';
    }
    await admin.page.goto(`${base}/ui/#/env/${beta}`);
    await admin.page.click('#open-terminal');
    await admin.page.waitForSelector('.xterm-rows');
    await until('the terminal to connect', async () => /Connected/.test(await admin.page.textContent('#terminal-note')));
    await admin.page.keyboard.type('echo lapse-$((6*7))\r');
    await until('the output', async () => /lapse-42/.test(await admin.page.textContent('.xterm-rows')));
    await admin.page.screenshot({ path: join(artefacts, 'terminal.png'), fullPage: true });
  });

  await test('signing out ends the session and revoking a key ends its sessions', async () => {
    await admin.page.goto(`${base}/ui/`);
    await admin.page.click('#sign-out');
    await admin.page.waitForSelector('#key');
    await admin.page.screenshot({ path: join(artefacts, 'login.png') });
    const cookie = (await t1.context.cookies()).find((c) => c.name === 'lapse_ui');
    const before = await api('GET', '/v1/environments', null, null, { Cookie: `lapse_ui=${cookie.value}` });
    assert(before.status === 200, `before revoking: ${before.status}`);
    const keyId = keys.t1.split('_')[1];
    assert((await api('DELETE', `/v1/admin/keys/${keyId}`)).status === 200, 'revoke');
    const after = await api('GET', '/v1/environments', null, null, { Cookie: `lapse_ui=${cookie.value}` });
    assert(after.status === 401, `after revoking: ${after.status}`);
  });
} catch (e) {
  failures++;
  console.log(`FAIL setup: ${e?.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
  server.kill('SIGTERM');
  writeFileSync(join(artefacts, 'server.log'), log.join(''));
  rmSync(dir, { recursive: true, force: true });
}
console.log(`\n${results.filter((r) => r.startsWith('ok')).length} passed, ${failures} failed; screenshots in ${artefacts}`);
if (failures) {
  console.log(log.join('').split('\n').slice(-40).join('\n'));
  process.exit(1);
}

// An admin switches an HA pair over from the portal's operations page, in headless Chromium
// (Debian's package, driven by playwright-core): sign in on the primary, read its HA status,
// open the switchover page, confirm. Prints one JSON object; tests/ha.rs asserts on it and
// then checks that the pair did switch.
//
// usage: node portal_switchover.mjs PLAYWRIGHT_DIR BASE_URL ACCOUNT PASSWORD OUT_DIR
import path from 'node:path';
import { createRequire } from 'node:module';

const [pwDir, base, account, password, out] = process.argv.slice(2);
const require = createRequire(path.join(pwDir, 'package.json'));
const { chromium } = require('playwright-core');
const result = {};
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(`${base}/portal/operations`);
  await page.fill('input[name=name]', account);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  result.landedOn = new URL(page.url()).pathname;
  result.role = await page.getAttribute('#ha-status [data-role]', 'data-role');
  await page.screenshot({ path: path.join(out, '11-operations-ha.png'), fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click('#switchover')]);
  result.confirmPage = new URL(page.url()).pathname;
  await page.screenshot({ path: path.join(out, '12-switchover-confirm.png'), fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click('#confirm-switchover')]);
  result.answer = await page.textContent('#switchover-result');
  await page.screenshot({ path: path.join(out, '13-switchover-done.png'), fullPage: true });
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

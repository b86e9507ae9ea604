// "Open in viewer" from pacsd's portal in headless Chromium (Debian's package, driven by
// playwright-core): the viewer refuses an anonymous visitor (login page, then back to the
// viewer), then a signed-in person opens a study's page, clicks "Open in viewer", and the
// OHIF viewer served by pacsd itself draws the study, reading DICOMweb with the portal's
// session cookie. Prints one JSON object; tests/portal.rs (over HTTP) and tests/tls.rs (over
// HTTPS) assert on it.
//
// usage: node portal_viewer.mjs PLAYWRIGHT_DIR BASE_URL NAME PASSWORD STUDY_UID OUT_DIR [TIMEOUT_MS]
// With PACSD_TRUST_SPKI (the base64 SHA-256 of the node certificate's public key) Chromium
// accepts that one key for an https BASE_URL, and no other; Node's own fetch trusts the CA in
// NODE_EXTRA_CA_CERTS.
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromiumArgs, waitForImage, watchRequests } from './viewer.mjs';

const [pwDir, base, name, password, study, out, timeoutText] = process.argv.slice(2);
const timeout = Number(timeoutText || 90000);
const require = createRequire(path.join(pwDir, 'package.json'));
const { chromium } = require('playwright-core');

const result = { failures: [], requests: 0 };
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: process.env.PACSD_TRUST_SPKI
    ? [...chromiumArgs, `--ignore-certificate-errors-spki-list=${process.env.PACSD_TRUST_SPKI}`]
    : chromiumArgs,
});
try {
  // 1. Anonymous: the viewer's page leads to the login page, its files want credentials.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${base}/viewer?StudyInstanceUIDs=${study}`);
  const login = new URL(page.url());
  result.anonymousLandsOn = login.pathname;
  result.anonymousNext = login.searchParams.get('next');
  result.anonymousConfig = (await fetch(`${base}/app-config.js`)).status;

  // 2. Sign in from there; the portal sends the person back to the viewer.
  await page.fill('input[name=name]', name);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  result.afterLogin = new URL(page.url()).pathname;

  // 3. The study's page has "Open in viewer"; it opens a new tab that draws the study.
  await page.goto(`${base}/portal/studies/${study}`);
  const link = page.getByRole('link', { name: 'Open in viewer' });
  result.link = await link.getAttribute('href');
  const [viewer] = await Promise.all([context.waitForEvent('page'), link.click()]);
  const dicomweb = `${base}/dicom-web/`;
  watchRequests(viewer, dicomweb, result);
  const started = Date.now();
  const { ms, levels } = await waitForImage(viewer, started, timeout);
  result.viewerPath = new URL(viewer.url()).pathname;
  result.firstImageMs = ms;
  result.greyLevels = levels;
  // How the viewer reached DICOMweb (h2, http/1.1) and whether its session cookie is Secure.
  result.dicomwebProtocols = await viewer.evaluate(prefix => [...new Set(
    performance.getEntriesByType('resource')
      .filter(e => e.name.startsWith(prefix)).map(e => e.nextHopProtocol))].sort(), dicomweb);
  result.sessionCookie = (await context.cookies())
    .filter(c => c.name === 'pacsd_session')
    .map(c => ({ secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite }))[0] ?? null;
  await viewer.screenshot({ path: path.join(out, '12-viewer.png') }).catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

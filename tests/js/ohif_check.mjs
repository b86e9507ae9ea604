// Open a study from pacsd in the OHIF viewer (npm's @ohif/app prebuilt dist/) in headless
// Chromium (Debian's package, driven by playwright-core), as a radiologist would: serve OHIF
// on its own port with an app-config.js pointing at pacsd's DICOMweb, open the viewer on the
// study with a bearer token, wait until a viewport canvas shows an image, and report every
// request to pacsd that failed. Prints one JSON object; tests/ohif.rs asserts on it.
//
// usage: node ohif_check.mjs OHIF_DIR PORT DICOMWEB_BASE STUDY_UID TOKEN [TIMEOUT_MS]
// (OHIF_DIR: where scripts/ohif.sh put package/dist and node_modules/playwright-core)
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromiumArgs, waitForImage, watchRequests } from './viewer.mjs';

const [ohifDir, portText, base, study, token, timeoutText] = process.argv.slice(2);
const dist = path.join(ohifDir, 'package', 'dist');
const timeout = Number(timeoutText || 90000);
const require = createRequire(path.join(ohifDir, 'package.json'));
// OHIF_PROXY=1 (the benchmark, for servers without CORS): OHIF talks to its own origin and
// this server forwards /dicom-web to the DICOMweb server, with the token as a bearer.
const proxy = process.env.OHIF_PROXY === '1';
const target = new URL(base);
const root = proxy ? `http://127.0.0.1:${portText}/dicom-web` : base;
const { chromium } = require('playwright-core');

// The configuration pacsd serves with its own viewer (src/http/viewer.rs), pointed at `root`.
const appConfig = fs
  .readFileSync(new URL('../../src/http/ohif-app-config.js', import.meta.url), 'utf8')
  .replaceAll('__DICOMWEB_ROOT__', root);

const types = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.woff2': 'font/woff2', '.ico': 'image/x-icon',
};
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (proxy && url.pathname.startsWith('/dicom-web')) {
    const headers = { ...req.headers, host: target.host };
    if (token !== '-') headers.authorization = `Bearer ${token}`;
    const upstream = http.request({
      host: target.hostname, port: target.port, method: req.method, headers,
      path: target.pathname.replace(/\/$/, '') + url.pathname.slice('/dicom-web'.length) + url.search,
    }, up => { res.writeHead(up.statusCode, up.headers); up.pipe(res); });
    upstream.on('error', () => { res.writeHead(502); res.end(); });
    return req.pipe(upstream);
  }
  if (url.pathname === '/app-config.js') {
    res.writeHead(200, { 'Content-Type': 'text/javascript' });
    return res.end(appConfig);
  }
  let file = path.join(dist, path.normalize(url.pathname).replace(/^(\.\.[/\\])+/, ''));
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    file = path.join(dist, 'index.html'); // the single-page app routes everything else
  }
  res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise(r => server.listen(Number(portText), '127.0.0.1', r));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: chromiumArgs,
});
const seen = { failures: [], requests: 0, consoleErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  watchRequests(page, root, seen);
  page.on('console', m => { if (m.type() === 'error') seen.consoleErrors.push(m.text().slice(0, 300)); });
  const started = Date.now();
  const auth = proxy || token === '-' ? '' : `&token=${token}`;
  await page.goto(`http://127.0.0.1:${portText}/viewer?StudyInstanceUIDs=${study}${auth}`);
  // OHIF_POLL_MS (the benchmark: 50) looks for the image more often than the tests do.
  const { ms, levels } = await waitForImage(page, started, timeout, Number(process.env.OHIF_POLL_MS || 200));
  seen.firstImageMs = ms;
  // The part of it that follows the first DICOMweb request: what the archive's answers (and
  // OHIF's handling of them) take, without loading and starting OHIF itself.
  if (ms !== null && seen.firstRequestAt !== undefined) {
    seen.fromFirstRequestMs = started + ms - seen.firstRequestAt;
  }
  delete seen.firstRequestAt;
  seen.greyLevels = levels;
  seen.title = await page.title();
  const shot = process.env.OHIF_SCREENSHOT || (levels ? '' : '/tmp/ohif-failed.png');
  if (shot) await page.screenshot({ path: shot }).catch(() => {});
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(seen));

// What the OHIF checks (ohif_check.mjs, portal_viewer.mjs) share: Chromium's flags for a
// WebGL viewer without a GPU, the count of a page's requests to a server with the ones that
// failed, and whether a page shows a medical image.

// Headless Chromium for OHIF: software WebGL, nothing fetched in the background.
export const chromiumArgs = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-gl=swiftshader', '--enable-unsafe-swiftshader'];

// Count `page`'s requests to URLs under `prefix` into `into.requests`, list the failed
// ones (HTTP 4xx/5xx or no answer) in `into.failures`, and note when the first was sent
// (`into.firstRequestAt`, ms since the epoch).
export const watchRequests = (page, prefix, into) => {
  page.on('request', r => {
    if (r.url().startsWith(prefix) && into.firstRequestAt === undefined) into.firstRequestAt = Date.now();
  });
  page.on('response', r => {
    if (r.url().startsWith(prefix)) {
      into.requests += 1;
      if (r.status() >= 400) into.failures.push(`${r.status()} ${r.url()}`);
    }
  });
  page.on('requestfailed', r => {
    if (r.url().startsWith(prefix)) into.failures.push(`failed ${r.url()} ${r.failure()?.errorText}`);
  });
};

// Whether a page shows a medical image: the grey levels of its best canvas (at least 64x64,
// more than 500 lit sampled pixels and more than 16 grey levels), else 0.
export const greyLevels = async page => page.evaluate(() => {
  let best = 0;
  for (const c of document.querySelectorAll('canvas')) {
    if (c.width < 64 || c.height < 64) continue;
    let ctx;
    try { ctx = c.getContext('2d'); } catch (e) { continue; }
    if (!ctx) continue;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const values = new Set();
    let lit = 0;
    for (let i = 0; i < d.length; i += 4 * 7) {
      if (d[i] + d[i + 1] + d[i + 2] > 30) lit += 1;
      values.add(d[i]);
    }
    best = Math.max(best, lit > 500 && values.size > 16 ? values.size : 0);
  }
  return best;
}).catch(() => 0);

// Poll `greyLevels` every `every` ms until an image shows or `timeout` ms pass:
// { ms, levels } (ms null if none).
export const waitForImage = async (page, started, timeout, every = 200) => {
  let levels = 0;
  while (Date.now() - started < timeout) {
    levels = await greyLevels(page);
    if (levels > 0) break;
    await page.waitForTimeout(every);
  }
  return { ms: levels > 0 ? Date.now() - started : null, levels };
};

// Whether a page shows a medical image: the grey levels of its best canvas (at least 64x64,
// more than 500 lit sampled pixels and more than 16 grey levels), else 0. Shared by the OHIF
// checks (ohif_check.mjs, portal_viewer.mjs).
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

// Poll `greyLevels` until an image shows or `timeout` ms pass: { ms, levels } (ms null if none).
export const waitForImage = async (page, started, timeout) => {
  let levels = 0;
  while (Date.now() - started < timeout) {
    levels = await greyLevels(page);
    if (levels > 0) break;
    await page.waitForTimeout(200);
  }
  return { ms: levels > 0 ? Date.now() - started : null, levels };
};

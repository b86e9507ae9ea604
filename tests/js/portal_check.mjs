// Walk through pacsd's web portal in headless Chromium (Debian's package, driven by
// playwright-core) as its people would: an anonymous visitor, a wrong then a right password,
// each search filter, a study page with its thumbnails, the image status with a replica's
// copies removed, an admin's verify and the repaired state, a ZIP download, an admin's
// deletion of a study, a viewer refused admin actions, sign-out; every control of every page reached with the Tab key, a
// sign-in with the keyboard alone, a folder uploaded through "Choose a folder". Screenshots of every page go to OUT_DIR. Prints one JSON object;
// tests/portal.rs asserts on it.
//
// usage: node portal_check.mjs PLAYWRIGHT_DIR BASE_URL ADMIN_PASSWORD VIEWER_PASSWORD STUDY_UID
//        NAME_STUDY_UID REPORT_STUDY_UID OUT_DIR UPLOAD_FOLDER UPLOAD_FILE...
import path from 'node:path';
import { createRequire } from 'node:module';

const [pwDir, base, adminPassword, viewerPassword, study, nameStudy, reportStudy, out, folder,
  ...uploads] = process.argv.slice(2);
const require = createRequire(path.join(pwDir, 'package.json'));
const { chromium } = require('playwright-core');

const result = { steps: [] };
const step = (name, value) => { result[name] = value; result.steps.push(name); };
const shot = async (page, name) => {
  await page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
};

// The controls of a page the Tab key never reaches (visible links, buttons, fields, summaries,
// and file inputs, which a label shows): pressed from the top, twice as often as there are
// controls. An empty list: the page can be used with the keyboard alone.
const keyboardMisses = async (page) => {
  const count = await page.evaluate(() => {
    const controls = [...document.querySelectorAll(
      'a[href], button, input:not([type=hidden]), select, textarea, summary')]
      .filter(e => !e.disabled && (e.getClientRects().length > 0 || e.type === 'file'));
    controls.forEach((e, i) => { e.dataset.kb = String(i); });
    window.kbSeen = new Set();
    document.addEventListener('focusin', ev => {
      if (ev.target.dataset && ev.target.dataset.kb) window.kbSeen.add(ev.target.dataset.kb);
    });
    if (document.activeElement) document.activeElement.blur();
    return controls.length;
  });
  for (let i = 0; i < 2 * count + 2; i++) await page.keyboard.press('Tab');
  return page.evaluate(() => [...document.querySelectorAll('[data-kb]')]
    .filter(e => !window.kbSeen.has(e.dataset.kb))
    .map(e => e.outerHTML.slice(0, 120)));
};
const keyboard = {};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  // 1. Anonymous: every page and download leads to the login page; DICOMweb wants credentials.
  const anon = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const ap = await anon.newPage();
  result.pageErrors = [];
  ap.on('pageerror', e => result.pageErrors.push(String(e)));
  ap.on('response', r => { if (r.status() >= 400) result.pageErrors.push(`${r.status()} ${r.url()}`); });
  await ap.goto(`${base}/portal/studies/${study}`);
  step('anonymousLandsOn', new URL(ap.url()).pathname);
  const dl = await fetch(`${base}/portal/studies/${study}/download`, { redirect: 'manual' });
  step('anonymousDownload', { status: dl.status, location: dl.headers.get('location') });
  const thumb = await fetch(`${base}/dicom-web/studies/${study}/thumbnail`);
  step('anonymousThumbnail', thumb.status);
  await shot(ap, '01-login');

  // 2. A wrong password, then the right one; back to the page first asked for.
  await ap.fill('input[name=name]', 'chief');
  await ap.fill('input[name=password]', 'not the password');
  const wrong = await Promise.all([ap.waitForNavigation(), ap.click('button[type=submit]')]);
  step('wrongPassword', { status: wrong[0].status(), alert: await ap.textContent('[role=alert]') });
  await shot(ap, '02-login-wrong');
  await ap.goto(`${base}/portal/studies/${study}`);
  keyboard.login = await keyboardMisses(ap);
  // With the keyboard alone: Tab into the fields, Enter to sign in.
  await ap.focus('input[name=name]');
  await ap.keyboard.type('chief');
  await ap.keyboard.press('Tab');
  await ap.keyboard.type(adminPassword);
  await Promise.all([ap.waitForNavigation(), ap.keyboard.press('Enter')]);
  step('afterLogin', new URL(ap.url()).pathname);
  const cookies = await anon.cookies();
  const session = cookies.find(c => c.name === 'pacsd_session');
  step('sessionCookie', session && { httpOnly: session.httpOnly, sameSite: session.sameSite });

  // 3. The study page: thumbnails drawn, image status with the removed copies.
  const thumbs = async () => ap.$$eval('.card > img', imgs => imgs.map(i => ({
    complete: i.complete, width: i.naturalWidth })));
  await ap.waitForFunction(() => [...document.querySelectorAll('.card > img')]
    .every(i => i.complete), null, { timeout: 30000 });
  step('seriesThumbnails', await thumbs());
  const status = async () => ap.$$eval('#replicas tbody tr', rows => rows.map(r => ({
    replica: Number(r.dataset.replica),
    present: Number(r.querySelector('[data-count=present]').textContent),
    missing: Number(r.querySelector('[data-count=missing]').textContent),
    queued: Number(r.querySelector('[data-count=queued]').textContent),
  })));
  step('statusBefore', await status());
  keyboard.study = await keyboardMisses(ap);
  await shot(ap, '03-study-missing-copies');

  // Instance thumbnails, once a series is opened.
  await ap.click('.card details summary');
  await ap.waitForFunction(() => {
    const imgs = [...document.querySelectorAll('.card details[open] .thumbs img')];
    return imgs.length > 0 && imgs.every(i => i.complete);
  }, null, { timeout: 30000 });
  step('instanceThumbnails', await ap.$$eval('.card details[open] .thumbs img',
    imgs => imgs.map(i => i.naturalWidth)));

  // 4. The admin verifies the study: the bad copies are queued, then repaired.
  await Promise.all([ap.waitForNavigation(), ap.click('#verify')]);
  step('verifyMessage', await ap.textContent('#verify-result'));
  step('statusQueued', await status());
  await shot(ap, '04-study-queued');
  const deadline = Date.now() + 60000;
  let healed = await status();
  while (Date.now() < deadline && healed.some(r => r.missing + r.queued > 0)) {
    await new Promise(r => setTimeout(r, 500));
    await ap.goto(`${base}/portal/studies/${study}`);
    healed = await status();
  }
  step('statusRepaired', healed);
  await shot(ap, '05-study-repaired');

  // 5. ZIP of the study.
  const [download] = await Promise.all([
    ap.waitForEvent('download'),
    ap.click('text=Download study (ZIP)'),
  ]);
  const zipPath = path.join(out, 'study.zip');
  await download.saveAs(zipPath);
  step('zip', { path: zipPath, suggested: download.suggestedFilename() });

  // 6. Each filter of the study list.
  const rows = async () => ap.$$eval('#studies tbody tr td:nth-child(2)', tds => tds.map(t => t.textContent));
  const search = async (fields) => {
    await ap.goto(`${base}/portal/studies`);
    for (const [k, v] of Object.entries(fields)) {
      if (k === 'sort') await ap.selectOption('select[name=sort]', v);
      else await ap.fill(`input[name=${k}]`, v);
    }
    await Promise.all([ap.waitForNavigation(), ap.click('form.filters button[type=submit]')]);
    return (await ap.$('#no-studies')) ? [] : rows();
  };
  step('filters', {
    all: await search({}),
    oldestFirst: await search({ sort: 'oldest' }),
    patientId: await search({ patient_id: 'PAT00002' }),
    nameCaseInsensitive: await search({ name: 'synthetic' }),
    nameWildcard: await search({ name: '*patient00003' }),
    nonAscii: await search({ name: 'müller' }),
    accession: await search({ accession: 'ACC00003' }),
    dateRange: await search({ from: '2005-01-03', to: '2005-01-04' }),
    modality: await search({ modality: 'mr' }),
    nothing: await search({ patient_id: 'NOBODY' }),
  });
  await search({ name: 'müller' });
  step('nonAsciiName', await ap.textContent('#studies tbody tr td:nth-child(1)'));
  await shot(ap, '06-search-non-ascii');
  await search({});
  keyboard.studies = await keyboardMisses(ap);
  await shot(ap, '07-studies');
  await ap.goto(`${base}/portal/studies/${nameStudy}`);
  step('nonAsciiHeading', await ap.textContent('h1'));

  // The structured report of study 2 as text.
  await ap.goto(`${base}/portal/studies/${reportStudy}`);
  step('report', {
    title: await ap.textContent('.report h3'),
    lines: await ap.$$eval('.report li', lis => lis.map(li => li.firstChild && li.innerText.split('\n')[0])),
  });
  await shot(ap, '06b-study-with-report');

  // 7. Upload: several files into the queue, each stored or refused with its reason.
  await ap.goto(`${base}/portal/upload`);
  keyboard.upload = await keyboardMisses(ap);
  const queued = async (n) => ap.waitForFunction((n) =>
    /0 to go/.test(document.getElementById('summary').textContent)
    && document.querySelectorAll('#queue tbody tr').length === n, n, { timeout: 60000 });
  await ap.setInputFiles('#files', uploads);
  await queued(uploads.length);
  step('uploadSummary', await ap.textContent('#summary'));
  // A folder (with subfolders) through "Choose a folder": every file in it is queued.
  await ap.setInputFiles('#folder', folder);
  const folderFiles = (await import('node:fs')).readdirSync(folder, { recursive: true })
    .filter(f => f.endsWith('.dcm')).length;
  await queued(uploads.length + folderFiles);
  step('uploadFolderSummary', await ap.textContent('#summary'));
  step('uploadOutcomes', await ap.$$eval('#queue tbody tr', trs => trs.map(tr => ({
    file: tr.children[0].textContent, outcome: tr.children[3].textContent }))));
  await shot(ap, '09-upload');

  // 8. Operations: the archive's counts, replica health, the (empty) repair queue.
  await ap.goto(`${base}/portal/operations`);
  step('operations', {
    instances: Number(await ap.textContent('[data-count=instances]')),
    repairs: Number(await ap.textContent('[data-count=repairs]')),
    replicas: (await ap.$$('#replica-health tbody tr')).length,
    upStates: await ap.$$eval('#replica-health tbody tr td:nth-child(2)', tds => tds.map(t => t.textContent)),
    repairsEmpty: (await ap.$('#repairs-empty')) !== null,
  });
  step('audit', await ap.$$eval('#audit tbody tr', trs => trs.map(tr => ({
    event: tr.children[1].textContent, outcome: tr.children[2].textContent,
    who: tr.children[3].textContent, what: tr.children[4].textContent }))));
  keyboard.operations = await keyboardMisses(ap);
  step('keyboardMisses', keyboard);
  await shot(ap, '10-operations');

  // 8b. An admin deletes a study: unticked, the browser keeps the form; ticked, the study is
  // gone and the list says how many images went.
  await ap.goto(`${base}/portal/studies/${nameStudy}`);
  await ap.click('#delete-study');
  step('deleteUnconfirmedStaysOn', new URL(ap.url()).pathname);
  await ap.check('form.delete input[name=confirm]');
  await Promise.all([ap.waitForNavigation(), ap.click('#delete-study')]);
  step('afterDelete', new URL(ap.url()).pathname + new URL(ap.url()).search);
  step('deleteMessage', await ap.textContent('#delete-result'));
  await shot(ap, '11-study-deleted');
  step('deletedStudyPage', (await ap.goto(`${base}/portal/studies/${nameStudy}`)).status());

  // 9. Sign out: the session is over.
  await Promise.all([ap.waitForNavigation(), ap.click('.signout button')]);
  step('afterLogout', new URL(ap.url()).pathname);
  await ap.goto(`${base}/portal/studies`);
  step('afterLogoutStudies', new URL(ap.url()).pathname);
  await anon.close();

  // 10. A viewer: no verify button, upload or operations, and a forged verify is refused.
  const vc = await browser.newContext({ viewport: { width: 1024, height: 768 } });
  const vp = await vc.newPage();
  await vp.goto(`${base}/portal/studies/${study}`);
  await vp.fill('input[name=name]', 'viewer');
  await vp.fill('input[name=password]', viewerPassword);
  await Promise.all([vp.waitForNavigation(), vp.click('button[type=submit]')]);
  step('viewerSeesVerify', (await vp.$('#verify')) !== null);
  await shot(vp, '08-study-as-viewer-tablet');
  step('viewerSeesUpload', (await vp.$('header a[href="/portal/upload"]')) !== null);
  const up = await vp.goto(`${base}/portal/upload`);
  step('viewerUploadPage', up.status());
  step('viewerSeesOperations', (await vp.$('header a[href="/portal/operations"]')) !== null);
  step('viewerOperationsPage', (await vp.goto(`${base}/portal/operations`)).status());
  const csrf = await vp.getAttribute('.signout input[name=csrf]', 'value');
  step('viewerVerify', await vp.evaluate(async ([s, c]) => {
    const r = await fetch(`/portal/studies/${s}/verify`, {
      method: 'POST', body: new URLSearchParams({ csrf: c }) });
    return r.status;
  }, [study, csrf]));
  step('viewerSeesDelete', (await vp.$('#delete-study')) !== null);
  step('viewerDelete', await vp.evaluate(async ([s, c]) => {
    const r = await fetch(`/portal/studies/${s}/delete`, {
      method: 'POST', body: new URLSearchParams({ csrf: c, confirm: 'yes' }) });
    return r.status;
  }, [study, csrf]));
  step('forgedCsrf', await vp.evaluate(async (s) => {
    const r = await fetch('/portal/logout', { method: 'POST', body: new URLSearchParams({ csrf: 'x' }) });
    return r.status;
  }, study));
  await vc.close();
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

// pacsd portal upload queue: files and folders (dropped or chosen) are sent one request per
// file, two at a time, to POST /portal/upload with the session's CSRF token; each row shows
// its progress and what the archive answered.
(() => {
  'use strict';
  const csrf = document.getElementById('csrf').value;
  const rows = document.querySelector('#queue tbody');
  const summary = document.getElementById('summary');
  const queue = [];
  let running = 0, stored = 0, refused = 0;
  const PARALLEL = 2;

  const say = () => {
    summary.textContent = `${stored} stored, ${refused} refused, ${queue.length + running} to go`;
  };

  const add = (file, name) => {
    const tr = document.createElement('tr');
    const cells = [name || file.webkitRelativePath || file.name, `${(file.size / 1024).toFixed(0)} KiB`];
    for (const text of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.children[1].className = 'num';
    const bar = document.createElement('progress');
    bar.max = file.size || 1;
    bar.value = 0;
    const progress = document.createElement('td');
    progress.appendChild(bar);
    const outcome = document.createElement('td');
    outcome.className = 'outcome';
    outcome.textContent = 'waiting';
    tr.append(progress, outcome);
    rows.appendChild(tr);
    queue.push({ file, bar, outcome, tr });
    say();
    pump();
  };

  const pump = () => {
    while (running < PARALLEL && queue.length) {
      const job = queue.shift();
      running++;
      send(job).finally(() => { running--; say(); pump(); });
    }
  };

  const send = (job) => new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/portal/upload');
    xhr.setRequestHeader('X-CSRF-Token', csrf);
    xhr.setRequestHeader('Content-Type', 'application/dicom');
    job.outcome.textContent = 'sending';
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) job.bar.value = e.loaded; };
    xhr.onload = () => {
      let answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 200 && answer.stored) {
        stored++;
        job.bar.value = job.bar.max;
        job.outcome.textContent = 'stored';
        job.outcome.className = 'outcome ok';
      } else {
        refused++;
        job.outcome.textContent = `refused: ${answer.refused || `HTTP ${xhr.status}`}`;
        job.outcome.className = 'outcome bad';
      }
      resolve();
    };
    xhr.onerror = () => {
      refused++;
      job.outcome.textContent = 'refused: the connection failed';
      job.outcome.className = 'outcome bad';
      resolve();
    };
    xhr.send(job.file);
  });

  // A dropped folder: walk it (DataTransferItem entries), adding every file.
  const walk = (entry, prefix) => {
    if (entry.isFile) {
      entry.file((f) => add(f, prefix + f.name));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      const more = () => reader.readEntries((entries) => {
        if (!entries.length) return;
        for (const e of entries) walk(e, `${prefix}${entry.name}/`);
        more();
      });
      more();
    }
  };

  const drop = document.getElementById('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const items = [...(e.dataTransfer.items || [])];
    if (items.length && items[0].webkitGetAsEntry) {
      for (const item of items) {
        const entry = item.webkitGetAsEntry();
        if (entry) walk(entry, '');
      }
    } else {
      for (const f of e.dataTransfer.files) add(f);
    }
  });
  for (const id of ['files', 'folder']) {
    document.getElementById(id).addEventListener('change', (e) => {
      for (const f of e.target.files) add(f);
      e.target.value = '';
    });
  }
  say();
})();

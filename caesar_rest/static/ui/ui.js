// caesar-rest dashboard: the few things a page does with script (every page also works without it).
// Uploads with a progress bar each, live job states and job page, sortable tables, confirmations.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  // ---- confirmations: forms marked .confirm ask first; a cancel form then says it was confirmed
  document.querySelectorAll("form.confirm").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm || "Are you sure?")) { ev.preventDefault(); return; }
      const flag = form.querySelector('input[name="confirmed"]');
      if (flag) flag.value = "1";
    });
  });

  // ---- sortable tables: a click on a header sorts by that column (numbers as numbers); delegated, so tables
  // that arrive later (a job's outputs) sort too
  document.addEventListener("click", (ev) => {
    const th = ev.target.closest("table.sortable thead th");
    if (!th) return;
    const table = th.closest("table"), heads = Array.from(th.parentNode.cells), col = heads.indexOf(th);
    const body = table.tBodies[0];
    const up = th.dataset.order !== "asc";
    heads.forEach((h) => delete h.dataset.order);
    th.dataset.order = up ? "asc" : "desc";
    const key = (tr) => (tr.cells[col] ? tr.cells[col].textContent.trim() : "");
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b), nx = Number(x), ny = Number(y);
      const c = x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach((r) => body.appendChild(r));
  });

  // ---- uploads: several files dropped or chosen, a progress bar each. Resumable (tus 1.0, with tus-js-client)
  // where the server offers it: chunks, and an upload cut off (a reload, a lost connection) goes on from where it
  // stopped when the same file is chosen again (its upload URL kept in the browser's localStorage). Otherwise one
  // request per file.
  const form = document.getElementById("upload-form");
  if (form) {
    const zone = document.getElementById("dropzone");
    const input = document.getElementById("file-input");
    const list = document.getElementById("progress");
    let pending = 0, failed = false;
    const finished = (li, label, ok, message) => {
      pending -= 1;
      if (ok) { li.classList.add("done"); label.textContent += " ✓"; }
      else { failed = true; li.classList.add("failed"); label.textContent += ": " + message; }
      if (pending === 0 && !failed) window.location.reload();
    };
    const resumable = (file, li, bar, label) => {
      const tag = document.getElementById("tag-input").value;
      const upload = new window.tus.Upload(file, {
        endpoint: form.dataset.tusUrl,
        chunkSize: Number(form.dataset.chunkBytes),
        metadata: Object.assign({filename: file.name}, tag ? {tag: tag} : {}),
        headers: {"X-CSRF-Token": csrf()},
        removeFingerprintOnSuccess: true,
        retryDelays: [0, 1000, 3000, 5000],
        onProgress: (sent, total) => { bar.value = 100 * sent / total; },
        onSuccess: () => { bar.value = 100; finished(li, label, true); },
        onError: (err) => {
          let message = "upload failed";
          const response = err && err.originalResponse;
          if (response) {
            try { message = JSON.parse(response.getBody()).message || message; }
            catch (e) { message = "upload failed (" + response.getStatus() + ")"; }
          }
          finished(li, label, false, message);
        },
      });
      upload.findPreviousUploads().then((previous) => {
        if (previous.length) { upload.resumeFromPreviousUpload(previous[0]); li.classList.add("resumed"); label.textContent += " (resumed)"; }
        upload.start();
      });
    };
    const send = (file) => {
      const li = document.createElement("li");
      const bar = document.createElement("progress");
      const label = document.createElement("span");
      bar.max = 100; bar.value = 0; label.textContent = " " + file.name;
      li.className = "upload"; li.append(bar, label); list.appendChild(li);
      pending += 1;
      if (window.tus && window.tus.isSupported && form.dataset.tusUrl) { resumable(file, li, bar, label); return; }
      const data = new FormData();
      const tag = document.getElementById("tag-input").value;
      if (tag) data.append("tag", tag);
      data.append("file", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = 100 * e.loaded / e.total; });
      xhr.addEventListener("loadend", () => {
        let answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = {}; }
        if (xhr.status === 200) bar.value = 100;
        finished(li, label, xhr.status === 200, answer.message || "upload failed (" + xhr.status + ")");
      });
      xhr.send(data);
    };
    const sendAll = (files) => { failed = false; Array.from(files).forEach(send); };
    form.addEventListener("submit", (ev) => { ev.preventDefault(); sendAll(input.files); });
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.remove("over"); }));
    zone.addEventListener("drop", (ev) => sendAll(ev.dataTransfer.files));
  }

  // ---- file options of an app's form: upload a new file in place, then pick it
  document.querySelectorAll(".upload-here").forEach((span) => {
    const select = document.getElementById(span.dataset.for);
    const picker = document.createElement("input");
    picker.type = "file"; picker.className = "upload-in-place";
    const status = document.createElement("span");
    span.textContent = "or upload: "; span.append(picker, status);
    picker.addEventListener("change", () => {
      if (!picker.files.length) return;
      const data = new FormData();
      data.append("file", picker.files[0], picker.files[0].name);
      status.textContent = " uploading…";
      fetch(span.dataset.uploadUrl, {method: "POST", body: data,
            headers: {"X-CSRF-Token": csrf()}, credentials: "same-origin"})
        .then((r) => r.json().then((j) => ({ok: r.ok, j})))
        .then(({ok, j}) => {
          if (!ok) { status.textContent = " " + (j.message || "upload failed"); return; }
          const opt = new Option(j.filename_orig + " (" + j.size_bytes + " B)", j.uuid, true, true);
          select.add(opt); status.textContent = " uploaded";
        });
    });
  });

  // ---- the jobs table: states of unfinished jobs every 2 s
  const table = document.querySelector("table.live-states");
  if (table) {
    const tick = () => {
      const open = Array.from(table.querySelectorAll('tr.job[data-finished="0"]'));
      if (!open.length) return;
      const q = open.map((tr) => "id=" + encodeURIComponent(tr.dataset.id)).join("&");
      fetch(table.dataset.statesUrl + "?" + q, {credentials: "same-origin"}).then((r) => r.json()).then((found) => {
        open.forEach((tr) => {
          const s = found[tr.dataset.id];
          if (!s) return;
          const cell = tr.querySelector("td.state");
          cell.textContent = s.state; cell.className = "state state-" + s.state;
          tr.querySelector("td.duration").textContent = s.duration;
          if (s.finished) tr.dataset.finished = "1";
        });
      }).finally(() => setTimeout(tick, 2000));
    };
    setTimeout(tick, 2000);
  }

  // ---- a job's page: state, timeline, logs and outputs every second until the job has ended
  const live = document.getElementById("job-live");
  if (live && live.dataset.finished === "0") {
    const tick = () => {
      fetch(live.dataset.liveUrl, {credentials: "same-origin"}).then((r) => r.json()).then((j) => {
        const state = document.getElementById("state");
        state.textContent = j.state; state.className = "state state-" + j.state;
        document.getElementById("status").textContent = j.status;
        document.getElementById("duration").textContent = j.duration;
        Object.entries(j.html).forEach(([k, html]) => { document.getElementById(k === "metadata" ? "meta" : k).innerHTML = html; });
        if (j.finished) {
          live.dataset.finished = "1";
          const cancel = document.getElementById("cancel");
          if (cancel) cancel.remove();
        } else setTimeout(tick, 1000);
      }).catch(() => setTimeout(tick, 3000));
    };
    setTimeout(tick, 1000);
  }
})();

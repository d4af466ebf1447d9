// derlink console: progressive enhancement only. Forms with data-api send JSON to the head-end API with the
// session's CSRF token; the API's {"error", "field"} is shown next to the field it names.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const role = () => (document.querySelector('meta[name="role"]') || {}).content || "";

  function body(form) {
    const out = {};
    for (const el of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (el.type === "file" || el.value === "") continue;
      const t = el.dataset.type || "string";
      let v = el.value.trim();
      if (t === "integer" || t === "number") v = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
      else if (t === "boolean") v = v === "true";
      else if (t === "array") v = v.split(",").map((s) => s.trim()).filter(Boolean);
      out[el.name] = v;
    }
    return out;
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((e) => (e.textContent = ""));
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  }

  function showError(form, data, status) {
    const field = data.field || "";
    let slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) || form.querySelector('[data-error-for=""]');
    if (slot) slot.textContent = data.error || `HTTP ${status}`;
    const input = field && form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }

  async function send(method, url, payload) {
    const r = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(payload),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}` }; }
    return [r, data];
  }

  async function confirmDialog(text) {
    const dlg = document.getElementById("confirm");
    if (!dlg || !dlg.showModal) return window.confirm(text);
    document.getElementById("confirm-text").textContent = text;
    dlg.showModal();
    return new Promise((res) => dlg.addEventListener("close", () => res(dlg.returnValue === "ok"), { once: true }));
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.dataset.upload) { ev.preventDefault(); return upload(form); }
    if (!form.dataset.api) return;
    ev.preventDefault();
    clearErrors(form);
    const [method, url] = form.dataset.api.split(" ");
    const payload = body(form);
    if (form.dataset.scope) {
      const r = await fetch(`${form.dataset.scope}?target=${encodeURIComponent(payload.target || "all")}`);
      const scope = await r.json();
      if (scope.error) return showError(form, { error: scope.error, field: "target" }, 400);
      const groups = scope.groups.length ? ` in ${scope.groups.join(", ")}` : "";
      if (!(await confirmDialog(`Issue ${payload.action} to ${scope.sites} site(s)${groups}?`))) return;
    } else if (form.dataset.confirm && !(await confirmDialog(form.dataset.confirm))) return;
    const [r, data] = await send(method, url, payload);
    if (!r.ok) return showError(form, data, r.status);
    const id = data.mrid || (data.incident && data.incident.id);
    if (form.dataset.next && id) location.href = form.dataset.next.replace("{id}", id);
    else location.reload();
  });

  // DOE upload: preview the file, then stream it with an upload progress bar; the ingest bar runs until the
  // server has committed (or rejected) every row.
  const file = document.getElementById("doe-file");
  if (file) file.addEventListener("change", () => {
    const f = file.files[0];
    const box = document.getElementById("doe-preview");
    box.textContent = "";
    if (!f) return;
    f.slice(0, 65536).text().then((text) => {
      const lines = text.split(/\r?\n/).filter(Boolean);
      const table = document.createElement("table");
      table.className = "preview";
      lines.slice(0, 11).forEach((line, i) => {
        const tr = table.insertRow();
        line.split(",").forEach((cell) => {
          const td = document.createElement(i ? "td" : "th");
          td.textContent = cell;
          tr.appendChild(td);
        });
      });
      const p = document.createElement("p");
      p.textContent = `${f.name}: ${f.size} bytes; first ${Math.min(10, lines.length - 1)} row(s) to be published:`;
      box.append(p, table);
    });
  });

  function upload(form) {
    const f = file.files[0];
    const out = document.getElementById("doe-result");
    const up = document.getElementById("up-progress"), ing = document.getElementById("in-progress");
    out.textContent = ""; up.value = 0; ing.value = 0;
    if (!f) { out.textContent = "file: choose a file"; return; }
    const fmt = /\.jsonl?$/i.test(f.name) ? "json" : "csv";
    const reason = form.querySelector('[name="reason"]').value;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${form.dataset.upload}?format=${fmt}${reason ? "&reason=" + encodeURIComponent(reason) : ""}`);
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.setRequestHeader("Content-Type", fmt === "csv" ? "text/csv" : "application/json");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) up.value = (100 * e.loaded) / e.total; };
    xhr.upload.onload = () => { up.value = 100; ing.removeAttribute("value"); };
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { error: `HTTP ${xhr.status}` }; }
      ing.value = xhr.status < 300 ? 100 : 0;
      if (xhr.status < 300) {
        out.className = "ok";
        out.textContent = `Published upload ${data.upload_id}: ${data.rows} interval(s) for ${data.sites} site(s).`;
        return;
      }
      out.className = "error";
      const list = document.createElement("ul");
      (data.errors || [{ message: data.error }]).forEach((e) => {
        const li = document.createElement("li");
        li.textContent = (e.line !== undefined ? `line ${e.line}: ` : e.record !== undefined ? `record ${e.record}: ` : "") + e.message;
        list.appendChild(li);
      });
      const p = document.createElement("p");
      p.textContent = "Rejected; nothing was published:";
      out.append(p, list);
    };
    xhr.send(f);
  }

  // Live numbers: elements with data-poll refresh their [data-key] children every 2 s.
  document.querySelectorAll("[data-poll]").forEach((box) => {
    setInterval(async () => {
      const r = await fetch(box.dataset.poll, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      box.querySelectorAll("[data-key]").forEach((el) => (el.textContent = data[el.dataset.key]));
    }, 2000);
  });

  // Staged restore: the waves table follows the restore as each wave is released.
  document.querySelectorAll("[data-poll-table]").forEach((table) => {
    setInterval(async () => {
      const r = await fetch(table.dataset.pollTable, { credentials: "same-origin" });
      if (!r.ok) return;
      const { waves } = await r.json();
      if (!waves.length) return;
      const tbody = table.tBodies[0];
      tbody.textContent = "";
      for (const w of waves) {
        const tr = tbody.insertRow();
        const state = w.released ? "released" : `holding, ${w.remaining_s} s left`;
        for (const text of [w.wave, w.target, new Date(w.release_at * 1000).toISOString(), state]) {
          tr.insertCell().textContent = text;
        }
      }
    }, 2000);
  });

  if (role() === "viewer") document.querySelectorAll("[data-write]").forEach((b) => {
    b.disabled = true; b.title = "viewer: read only";
  });
})();

// The installer page's progressive enhancement: follow a running step, show live device values.
(function () {
  "use strict";
  const job = document.getElementById("job");
  const log = document.getElementById("job-log");
  async function follow() {
    try {
      const r = await fetch("/installer/job.json", { cache: "no-store" });
      const j = await r.json();
      if (log) log.textContent = j.lines.join("\n");
      if (!j.running) { location.reload(); return; }
    } catch (e) { /* the gateway may be busy; try again */ }
    setTimeout(follow, 600);
  }
  if (job && job.dataset.running === "1") setTimeout(follow, 400);

  const live = document.querySelector("#live tbody");
  function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
  async function refresh() {
    try {
      const r = await fetch("/installer/live.json", { cache: "no-store" });
      const j = await r.json();
      const rows = j.devices.map(function (d) {
        const tr = document.createElement("tr");
        tr.dataset.device = d.name;
        cell(tr, d.name); cell(tr, d.role);
        cell(tr, d.error ? "no answer: " + d.error : (d.w == null ? "-" : Math.round(d.w) + " W"));
        cell(tr, d.limit_pct == null ? "-" : d.limit_pct + " %");
        return tr;
      });
      live.replaceChildren.apply(live, rows);
    } catch (e) { /* keep the last values */ }
    setTimeout(refresh, 1000);
  }
  if (live) refresh();
})();

// The Jobs table: re-rendered from /admin/jobs.json every 1.5 s, so it stays live without reloads.
"use strict";
(() => {
  const table = document.getElementById("jobs");
  const body = table.tBodies[0];
  const pager = document.getElementById("pager");
  const {el, duration, standing} = atelier;

  function row(job) {
    const bar = el("div", {class: "progress"}, el("div", {class: "bar", style: `width: ${job.percent}%`}));
    return el("tr", {"data-id": job.id, "data-status": job.status},
      el("td", {}, el("a", {href: job.url, class: "mono"}, job.id.slice(0, 8))),
      el("td", {}, el("span", {class: "badge", "data-status": job.status}, job.status)),
      el("td", {}, job.owner),
      el("td", {class: "num"}, job.size ?? "—"),
      el("td", {class: "num"}, job.iterations ?? "—"),
      job.queue ? el("td", {class: "standing muted"}, standing(job.queue))
        : el("td", {title: job.percent.toFixed(1) + " %"},
             el("div", {class: "progress-cell"}, bar, el("span", {class: "pct"}, Math.floor(job.percent) + "%"))),
      el("td", {class: "num"}, duration(job.queue_wait)),
      el("td", {class: "num"}, duration(job.run_time)),
      el("td", {class: "num"}, job.attempts),
      el("td", {}, new Date(job.created_at).toLocaleString()));
  }

  function pageLink(page, label) {
    const url = new URL(window.location.href);
    url.searchParams.set("page", page);
    return el("a", {href: url.pathname + url.search}, label);
  }

  atelier.poll(table.dataset.source, 1500, (data) => {
    body.replaceChildren(...(data.jobs.length ? data.jobs.map(row)
      : [el("tr", {}, el("td", {colspan: 10, class: "muted"}, "No jobs match."))]));
    document.getElementById("total").textContent = `${data.total} in all`;
    const parts = [];
    if (data.page > 1) parts.push(pageLink(data.page - 1, "← Newer"));
    parts.push(el("span", {}, `page ${data.page} of ${data.pages}`));
    if (data.page < data.pages) parts.push(pageLink(data.page + 1, "Older →"));
    pager.replaceChildren(...parts);
  });
})();

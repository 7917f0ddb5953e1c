// Shared by the dashboard's pages: formatting, and polling a JSON endpoint while the page is open.
"use strict";
const atelier = {
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  },
  // where a queued job stands: "2 jobs ahead · starts in 12 s · ETA 14 s"
  standing(q) {
    const ahead = q.position === 0 ? "next in the queue" : `${q.position} job${q.position === 1 ? "" : "s"} ahead`;
    if (q.workers === 0) return `${ahead} · waiting for a worker`;
    if (q.starts_in_seconds === null) return ahead;
    return `${ahead} · starts in ${atelier.duration(q.starts_in_seconds)}`
      + (q.eta_seconds !== null ? ` · ETA ${atelier.duration(q.eta_seconds)}` : "");
  },
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  },
  // Fetch `url` every `ms` and hand the JSON to `render`; stop when `render` returns false.
  // A 401 means the session ended: go to the sign-in page.
  poll(url, ms, render) {
    let stopped = false;
    const tick = async () => {
      try {
        const response = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
        if (response.status === 401) { window.location.reload(); return; }
        if (response.ok && render(await response.json()) === false) stopped = true;
      } catch (e) { /* offline for a moment: try again next tick */ }
      if (!stopped) setTimeout(tick, ms);
    };
    tick();
  },
};
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// A job's page: progress, ETA, loss chart, snapshots and result, refreshed every second from
// /admin/jobs/<id>/state.json until the job ends.
"use strict";
(() => {
  const {el, duration, standing} = atelier;
  const $ = (id) => document.getElementById(id);
  const live = $("live");
  let frames = [], timer = null;

  function showFrame(i) {
    if (!frames.length) return;
    $("frame").src = frames[i].url;
    $("slider").value = i;
    $("frame-label").textContent = `iteration ${frames[i].iteration}`;
  }

  function renderSnapshots(snapshots) {
    if (snapshots.length === frames.length) return;
    const atEnd = Number($("slider").value) >= frames.length - 1;
    frames = snapshots;
    $("snapshot-count").textContent = `(${frames.length})`;
    $("no-snapshots").hidden = frames.length > 0;
    $("player").hidden = frames.length === 0;
    $("slider").max = Math.max(frames.length - 1, 0);
    $("strip").replaceChildren(...frames.map((s, i) => {
      const img = el("img", {src: s.url, alt: `iteration ${s.iteration}`, title: `iteration ${s.iteration}`, loading: "lazy"});
      img.addEventListener("click", () => showFrame(i));
      return img;
    }));
    if (atEnd && !timer) showFrame(frames.length - 1);
  }

  $("slider").addEventListener("input", (e) => showFrame(Number(e.target.value)));
  $("play").addEventListener("click", () => {
    if (timer) { clearInterval(timer); timer = null; $("play").textContent = "Play"; return; }
    let i = Number($("slider").value) >= frames.length - 1 ? 0 : Number($("slider").value);
    $("play").textContent = "Pause";
    showFrame(i);
    timer = setInterval(() => {
      if (++i >= frames.length) { clearInterval(timer); timer = null; $("play").textContent = "Play"; return; }
      showFrame(i);
    }, 400);
  });

  function render(s) {
    const status = $("status");
    status.textContent = s.cancel_requested && s.status === "running" ? "stopping" : s.status;
    status.dataset.status = s.status;
    $("attempts").textContent = s.attempts;
    $("bar").style.width = `${s.percent}%`;
    $("percent").textContent = `${s.percent.toFixed(1)} %`;
    $("iteration").textContent = `iteration ${s.iteration} of ${s.total ?? "?"}`;
    $("eta").textContent = s.queue ? standing(s.queue)
      : s.eta_seconds !== null ? `ETA ${duration(s.eta_seconds)}`
      : (s.iterations_per_second ? `${s.iterations_per_second} it/s` : "");
    $("queue-wait").textContent = duration(s.queue_wait);
    $("run-time").textContent = duration(s.run_time);
    $("cancel-form").hidden = !(s.status === "queued" || s.status === "running") || s.cancel_requested;
    lossChart.draw($("chart"), s.losses, s.total);
    renderSnapshots(s.snapshots);
    if (s.result) {
      $("result-card").hidden = false;
      if ($("result-link").getAttribute("href") !== s.result.url) {
        $("result-link").href = s.result.url;
        $("result-img").src = s.result.url;
      }
      $("quality").replaceChildren(el("dt", {}, "size"), el("dd", {}, `${s.result.width} × ${s.result.height}`),
        ...Object.entries(s.result.quality).flatMap(([k, v]) => [el("dt", {}, k.replaceAll("_", " ")),
          el("dd", {}, typeof v === "number" ? v.toPrecision(4) : v)]));
    }
    $("run").hidden = !s.run;
    if (s.run) {
      const r = s.run;
      $("run").textContent = `Ran on ${r.worker} (${r.device_name}, ${r.device}) in ${r.precision}: `
        + `${r.seconds.toFixed(1)} s, peak memory ${r.peak_memory_mb} MB`
        + (r.batch_size > 1 ? `, shared by a batch of ${r.batch_size} jobs` : "");
    }
    $("error").hidden = !s.error;
    if (s.error) $("error").replaceChildren(el("strong", {}, s.error.code), ": ", s.error.message);
    return s.status === "queued" || s.status === "running";
  }

  if (render(JSON.parse($("initial-state").textContent))) atelier.poll(live.dataset.source, 1000, render);
})();

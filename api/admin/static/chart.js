// A small SVG line chart of a job's losses per iteration, on a log scale (the terms span
// orders of magnitude and fall by several). No library: a few paths, two axes, a legend.
"use strict";
const lossChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const SERIES = [["content", "var(--content)"], ["style", "var(--style)"], ["total", "var(--total)"]];
  const W = 640, H = 260, PAD = {left: 56, right: 12, top: 12, bottom: 30};

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function label(value) {
    const exp = Math.floor(Math.log10(value));
    return Math.abs(exp) >= 4 ? `1e${exp}` : String(10 ** exp);
  }

  // points: [[iteration, content, style, total], ...]; total: the job's iteration count
  function draw(container, points, total) {
    if (!points.length) {
      container.replaceChildren(Object.assign(document.createElement("p"), {className: "muted", textContent: "No losses yet."}));
      return;
    }
    const values = points.flatMap((p) => p.slice(1)).filter((v) => v > 0);
    if (!values.length) return;
    const lo = Math.floor(Math.log10(Math.min(...values))), hi = Math.ceil(Math.log10(Math.max(...values))) || lo + 1;
    const xMax = Math.max(total || 0, points[points.length - 1][0], 1);
    const x = (it) => PAD.left + (it / xMax) * (W - PAD.left - PAD.right);
    const y = (v) => PAD.top + (1 - (Math.log10(v) - lo) / Math.max(hi - lo, 1)) * (H - PAD.top - PAD.bottom);
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "loss-chart"});
    for (let e = lo; e <= hi; e++) {
      root.append(svg("line", {x1: PAD.left, x2: W - PAD.right, y1: y(10 ** e), y2: y(10 ** e), class: "grid"}));
      root.append(svg("text", {x: PAD.left - 6, y: y(10 ** e) + 4, class: "tick", "text-anchor": "end"}, label(10 ** e)));
    }
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const it = Math.round(f * xMax);
      root.append(svg("text", {x: x(it), y: H - 10, class: "tick", "text-anchor": "middle"}, it));
    }
    root.append(svg("text", {x: W - PAD.right, y: H - 10 + 0, class: "tick axis-name", "text-anchor": "end", dy: "-12"}, "iteration"));
    SERIES.forEach(([name, colour], i) => {
      const d = points.filter((p) => p[i + 1] > 0).map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[i + 1]).toFixed(1)}`).join("");
      root.append(svg("path", {d, fill: "none", stroke: colour, "stroke-width": 2, class: `series series-${name}`}));
      root.append(svg("rect", {x: PAD.left + 10 + i * 90, y: PAD.top + 2, width: 12, height: 12, fill: colour}));
      root.append(svg("text", {x: PAD.left + 26 + i * 90, y: PAD.top + 12, class: "legend"}, name));
    });
    container.replaceChildren(root);
  }

  return {draw};
})();

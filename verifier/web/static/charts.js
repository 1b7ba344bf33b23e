// Inline SVG charts drawn from JSON: line plots (ROC, DET, reliability), histograms, the distance scale.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 360, H = 260, M = {left: 52, right: 14, top: 14, bottom: 44};

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The standard normal quantile (Acklam's rational approximation), for DET axes.
  function probit(p) {
    const a = [-39.6968302866538, 220.946098424521, -275.928510446969, 138.357751867269, -30.6647980661472, 2.50662827745924];
    const b = [-54.4760987982241, 161.585836858041, -155.698979859887, 66.8013118877197, -13.2806815528857];
    const c = [-0.00778489400243029, -0.322396458041136, -2.40075827716184, -2.54973253934373, 4.37466414146497, 2.93816398269878];
    const d = [0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742];
    const q = Math.min(Math.max(p, 1e-9), 1 - 1e-9);
    if (q < 0.02425) {
      const r = Math.sqrt(-2 * Math.log(q));
      return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1);
    }
    if (q > 1 - 0.02425) return -probit(1 - q);
    const r = q - 0.5, s = r * r;
    return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1);
  }

  // A plot frame with axes: returns {svg, x(value), y(value)}; `axis.map` transforms values (e.g. probit).
  function frame(title, xAxis, yAxis) {
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "plot"});
    svg.append(el("title", {}, title));
    const scale = (axis, from, to) => {
      const map = axis.map || (v => v), lo = map(axis.min), hi = map(axis.max);
      return v => from + (map(v) - lo) / ((hi - lo) || 1) * (to - from);
    };
    const x = scale(xAxis, M.left, W - M.right), y = scale(yAxis, H - M.bottom, M.top);
    svg.append(el("rect", {x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom, class: "frame"}));
    for (const t of xAxis.ticks) {
      svg.append(el("line", {x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: "grid"}));
      svg.append(el("text", {x: x(t), y: H - M.bottom + 14, "text-anchor": "middle"}, (xAxis.format || String)(t)));
    }
    for (const t of yAxis.ticks) {
      svg.append(el("line", {x1: M.left, x2: W - M.right, y1: y(t), y2: y(t), class: "grid"}));
      svg.append(el("text", {x: M.left - 4, y: y(t) + 4, "text-anchor": "end"}, (yAxis.format || String)(t)));
    }
    svg.append(el("text", {x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle", class: "label"}, xAxis.label));
    svg.append(el("text", {x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "label",
                           transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`}, yAxis.label));
    return {svg, x, y};
  }

  function path(points, x, y) {
    return points.map(([u, v], i) => `${i ? "L" : "M"}${x(u).toFixed(1)},${y(v).toFixed(1)}`).join("");
  }

  // series: [{points: [[x, y]], cls, label}]; marks: [{x, y, label}].
  function line(container, title, xAxis, yAxis, series, marks) {
    const {svg, x, y} = frame(title, xAxis, yAxis);
    for (const s of series) {
      const node = el("path", {d: path(s.points, x, y), class: `series ${s.cls}`});
      node.append(el("title", {}, s.label));
      svg.append(node);
    }
    legend(svg, series.filter(s => s.legend), "line");
    for (const mark of marks || []) {
      const dot = el("circle", {cx: x(mark.x), cy: y(mark.y), r: 5, class: "mark"});
      dot.append(el("title", {}, mark.label));
      svg.append(dot);
    }
    container.replaceChildren(svg);
  }

  // Bars of each group over the same edges, with a vertical threshold line.
  function histogram(container, title, edges, groups, threshold, unit) {
    const top = Math.max(1e-9, ...groups.flatMap(g => g.values));
    const ticks = [edges[0], (edges[0] + edges[edges.length - 1]) / 2, edges[edges.length - 1]];
    const {svg, x, y} = frame(title, {min: edges[0], max: edges[edges.length - 1], ticks, label: "distance",
                                      format: v => v.toFixed(2)},
                              {min: 0, max: top, ticks: [0, top / 2, top], label: unit,
                               format: v => unit === "count" ? Math.round(v) : v.toFixed(2)});
    groups.forEach(group => group.values.forEach((value, i) => {
      if (!value) return;
      const bar = el("rect", {x: x(edges[i]), y: y(value), width: Math.max(1, x(edges[i + 1]) - x(edges[i]) - 1),
                              height: y(0) - y(value), class: `bar ${group.cls}`});
      bar.append(el("title", {}, `${group.label}: ${value} in ${edges[i].toFixed(3)}–${edges[i + 1].toFixed(3)}`));
      svg.append(bar);
    }));
    svg.append(el("line", {x1: x(threshold), x2: x(threshold), y1: M.top, y2: H - M.bottom, class: "threshold"}));
    svg.append(el("text", {x: x(threshold) + 3, y: M.top + 12, class: "label"}, `threshold ${threshold.toFixed(3)}`));
    legend(svg, groups, "bar");
    container.replaceChildren(svg);
  }

  // Swatches and labels in the top right corner (or bottom right for lines, clear of rising curves).
  function legend(svg, items, kind) {
    items.forEach((item, i) => {
      const x = W - M.right - 90, y = kind === "bar" ? M.top + 8 + i * 16 : H - M.bottom - 12 - (items.length - 1 - i) * 16;
      svg.append(kind === "bar" ? el("rect", {x, y, width: 10, height: 10, class: `bar ${item.cls}`})
                                : el("line", {x1: x, x2: x + 12, y1: y + 5, y2: y + 5, class: `series ${item.cls}`}));
      svg.append(el("text", {x: x + 16, y: y + 9, class: "legend"}, item.label));
    });
  }

  // A horizontal scale from 0 to `max` with the threshold and the distance marked.
  function scale(container, distance, threshold, max) {
    const width = 480, left = 12, right = width - 12, x = v => left + Math.min(v, max) / max * (right - left);
    const svg = el("svg", {viewBox: `0 0 ${width} 72`, role: "img", class: "scale",
                           "aria-label": `distance ${distance.toFixed(3)}; threshold ${threshold.toFixed(3)}`});
    svg.append(el("rect", {x: left, y: 28, width: x(threshold) - left, height: 12, class: "accept"}));
    svg.append(el("rect", {x: x(threshold), y: 28, width: right - x(threshold), height: 12, class: "reject"}));
    svg.append(el("line", {x1: x(threshold), x2: x(threshold), y1: 22, y2: 46, class: "threshold"}));
    svg.append(el("text", {x: x(threshold), y: 60, "text-anchor": "middle", class: "label"}, `threshold ${threshold.toFixed(3)}`));
    svg.append(el("path", {d: `M${x(distance)},26 l-6,-10 h12 z`, class: "pointer"}));
    svg.append(el("text", {x: left, y: 10, class: "label"}, "same ←"));
    svg.append(el("text", {x: right, y: 10, "text-anchor": "end", class: "label"}, "→ different"));
    container.replaceChildren(svg);
  }

  return {line, histogram, scale, probit};
})();

// biofed dashboards: draw every <canvas data-chart="..."> with Chart.js.
// The page's Content-Security-Policy allows no inline script: chart data travel as JSON in
// the canvas's data-chart attribute (see biofed.web.chart). Each drawn canvas gets
// data-rendered="N" (N = its data points) so tests and people can tell a chart drew data.
"use strict";
(function () {
  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  function draw(canvas) {
    let spec;
    try { spec = JSON.parse(canvas.dataset.chart); } catch (e) { canvas.dataset.rendered = "error"; return; }
    const names = Object.keys(spec.series || {});
    let points = 0;
    const datasets = names.map(function (name, i) {
      const values = spec.series[name];
      points += values.filter(function (v) { return v !== null; }).length;
      return {
        label: name, data: values, borderColor: palette[i % palette.length],
        backgroundColor: palette[i % palette.length], spanGaps: true, pointRadius: 2,
        stepped: spec.kind === "stepped" ? "before" : false, fill: false,
      };
    });
    const type = spec.kind === "stepped" ? "line" : spec.kind;
    const scale = function (label) { return label ? { title: { display: true, text: label } } : {}; };
    new Chart(canvas, {
      type: type,
      data: { labels: spec.labels, datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { title: { display: !!spec.title, text: spec.title || "" } },
        scales: { x: scale(spec.x_label), y: scale(spec.y_label) },
      },
    });
    canvas.dataset.rendered = String(points);
  }
  function all() { document.querySelectorAll("canvas[data-chart]").forEach(draw); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", all); } else { all(); }
})();

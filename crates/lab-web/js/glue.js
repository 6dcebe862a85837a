// Browser glue for lab-web: WebGPU detection and the charts (uPlot, loaded by index.html
// as the global `uPlot`). Nothing here computes a metric: it draws the numbers it is given.

/**
 * A description of the WebGPU adapter (in a worker: its navigator's), or null when
 * navigator.gpu gives none. A software adapter (SwiftShader) says so.
 */
export async function webgpuAdapter() {
  const gpu = typeof navigator !== 'undefined' ? navigator.gpu : undefined;
  if (!gpu) return null;
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info || {};
    const text = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed adapter';
    return (info.isFallbackAdapter || adapter.isFallbackAdapter) ? `${text} (software)` : text;
  } catch (_) {
    return null;
  }
}

/** In the training worker: the engine its page asked for (`auto`, `webgpu` or `cpu`). */
export function engineChoice() {
  const query = typeof self !== 'undefined' && self.location ? self.location.search : '';
  return new URLSearchParams(query).get('engine') || 'auto';
}

const plots = new Map();

function drawMarks(u, marks) {
  if (!marks || !marks.length) return;
  const ctx = u.ctx;
  ctx.save();
  for (const mark of marks) {
    const x = Math.round(u.valToPos(mark.x, 'x', true));
    ctx.strokeStyle = mark.color;
    ctx.fillStyle = mark.color;
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    ctx.fillText(mark.label, x + 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio * (1 + (mark.row || 0)));
  }
  ctx.restore();
}

/**
 * Draw or update the chart in the element with id `id` from a JSON spec:
 * {title, y_label, y2_label, series:[{label,color,dash,scale}], data:[[x...],[y...],...],
 *  bands:[{series:[upper,lower],fill}], marks:[{x,label,color,row}]}
 * The last spec of each chart is kept in window.__alabCharts for tests.
 */
export function drawChart(id, json) {
  const spec = JSON.parse(json);
  (window.__alabCharts = window.__alabCharts || {})[id] = spec;
  const el = document.getElementById(id);
  if (!el || typeof uPlot === 'undefined') return;
  const key = JSON.stringify([spec.series, spec.bands]);
  let entry = plots.get(id);
  if (entry && entry.key === key && entry.el === el && el.contains(entry.plot.root)) {
    entry.marks = spec.marks;
    entry.plot.setData(spec.data);
    return;
  }
  if (entry) entry.plot.destroy();
  entry = { key, el, marks: spec.marks, plot: null };
  const axes = [{ label: 'step' }, { scale: 'y', label: spec.y_label || '' }];
  if (spec.series.some((s) => s.scale === 'y2')) axes.push({ scale: 'y2', side: 1, grid: { show: false }, label: spec.y2_label || '' });
  const opts = {
    title: spec.title,
    width: Math.max(280, el.clientWidth || 420),
    height: 230,
    scales: { x: { time: false } },
    series: [{ label: 'step' }].concat(spec.series.map((s) => ({
      label: s.label, stroke: s.color, width: 1.6, dash: s.dash || undefined, scale: s.scale || 'y', spanGaps: true, points: { show: false },
    }))),
    bands: (spec.bands || []).map((b) => ({ series: b.series, fill: b.fill })),
    axes,
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    hooks: { draw: [(u) => drawMarks(u, entry.marks)] },
  };
  entry.plot = new uPlot(opts, spec.data, el);
  plots.set(id, entry);
}

/** Expose page state to tests (window.__alab). */
export function exposeState(json) {
  window.__alab = Object.assign(window.__alab || {}, JSON.parse(json));
}

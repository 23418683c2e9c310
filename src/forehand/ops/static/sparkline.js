// Sparklines as inline SVG: no library, no build step.
const SVG = "http://www.w3.org/2000/svg";

/**
 * An SVG polyline of `values` scaled into a width x height box. `floor` is the smallest top of
 * the scale (so a flat low line stays low); `threshold`, when given, draws a dashed line there.
 */
export function sparkline(values, { width = 200, height = 22, floor = 1, threshold = null,
                                    className = "" } = {}) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", `spark ${className}`.trim());
  const top = Math.max(floor, threshold ?? 0, ...values);
  const y = (value) => (height - 1 - (value / top) * (height - 2)).toFixed(1);
  if (threshold !== null) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("class", "threshold");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", String(width));
    line.setAttribute("y1", y(threshold));
    line.setAttribute("y2", y(threshold));
    svg.append(line);
  }
  if (values.length > 0) {
    const step = values.length > 1 ? width / (values.length - 1) : 0;
    const points = values.map((value, index) => `${(index * step).toFixed(1)},${y(value)}`);
    const polyline = document.createElementNS(SVG, "polyline");
    polyline.setAttribute("points", points.join(" "));
    svg.append(polyline);
  }
  return svg;
}

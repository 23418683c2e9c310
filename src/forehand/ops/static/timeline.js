// The handoff timeline: audit records as they end, handoffs as they start.
const ITEMS_MAX = 200;

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function partsText(parts) {
  if (parts.length === 0) return "";
  const shown = parts.slice(0, 3).map((part) => part.split("/").map(
    (piece, index) => (index === 0 ? piece.slice(0, 8) : piece)).join("/"));
  const more = parts.length > 3 ? ` +${parts.length - 3}` : "";
  return `${parts.length} part(s): ${shown.join(", ")}${more}`;
}

function riskText(risk) {
  if (!risk) return "";
  const value = risk.risk === null ? "" : ` risk ${risk.risk.toFixed(2)}`;
  const features = risk.top_features.length
    ? `; top features: ${risk.top_features.map(([name, weight]) => `${name} ${Number(weight).toFixed(2)}`).join(", ")}`
    : "";
  return `decision:${value} ${risk.detail}${features}`;
}

export class Timeline {
  constructor(list) {
    this.list = list;
    this.seen = new Set();
    this.started = new Map();
  }

  /** An audit record (an operation that ended). */
  addRecord(record) {
    if (this.seen.has(record.sequence)) return;
    this.seen.add(record.sequence);
    if (record.kind === "handoff") {
      const key = `${record.source}>${record.target}>${record.parts.join(",")}`;
      this.started.get(key)?.remove();
      this.started.delete(key);
    }
    const item = element("li", `event ${record.kind} outcome-${record.outcome}`);
    item.dataset.kind = record.kind;
    item.dataset.sequence = String(record.sequence);
    item.dataset.outcome = record.outcome;
    item.dataset.reason = record.reason;
    const route = record.target ? `${record.source} → ${record.target}` : record.source;
    const head = element("div", "head");
    head.append(
      element("span", "what", `${record.kind} ${route}: ${record.outcome}`),
      element("span", "when", clock(record.ended_us / 1000)),
    );
    item.append(head);
    const lead = record.lead_time_ms === null ? "" : `, lead ${Math.round(record.lead_time_ms)} ms`;
    item.append(element("div", "detail",
      `reason ${record.reason}, ${Math.round(record.duration_ms)} ms${lead}. ${partsText(record.parts)}`));
    const decision = riskText(record.risk);
    if (decision) item.append(element("div", "detail", decision));
    if (record.detail) item.append(element("div", "detail", record.detail));
    this.prepend(item);
  }

  /** A handoff that started (replaced by its record when it ends). */
  addStarted(handoff) {
    const item = element("li", "event handoff started");
    item.dataset.kind = "handoff_started";
    item.dataset.reason = handoff.reason;
    const head = element("div", "head");
    head.append(
      element("span", "what", `handoff ${handoff.source} → ${handoff.target}: moving`),
      element("span", "when", clock(handoff.at_ms)),
    );
    item.append(head, element("div", "detail",
      `reason ${handoff.reason}. ${partsText(handoff.parts)}`));
    this.started.set(`${handoff.source}>${handoff.target}>${handoff.parts.join(",")}`, item);
    this.prepend(item);
  }

  prepend(item) {
    this.list.prepend(item);
    while (this.list.children.length > ITEMS_MAX) this.list.lastElementChild.remove();
  }
}

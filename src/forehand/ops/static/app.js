// The dashboard: server cards with sparklines, the handoff timeline, live over server-sent events.
import { sparkline } from "./sparkline.js";
import { Timeline } from "./timeline.js";

const servers = document.getElementById("servers");
const timeline = new Timeline(document.getElementById("timeline"));
const streamState = document.getElementById("stream-state");
const drains = new Map();

function text(id, value) {
  document.getElementById(id).textContent = String(value);
}

function metricRow(grid, label, value, spark) {
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  const shown = document.createElement("span");
  shown.className = "value";
  shown.textContent = value;
  grid.append(name, spark ?? document.createElement("span"), shown);
  return shown;
}

function riskClass(risk) {
  if (risk >= 1) return "risk-high";
  if (risk >= 0.7) return "risk-mid";
  return "";
}

function card(server) {
  const node = document.createElement("article");
  node.className = "card server";
  node.dataset.serverId = server.server_id;
  node.dataset.mapState = server.map_state;
  const title = document.createElement("h3");
  const name = document.createElement("span");
  name.textContent = server.server_id;
  const badges = document.createElement("span");
  for (const state of [server.member_state, server.map_state].filter(Boolean)) {
    const badge = document.createElement("span");
    badge.className = `badge ${state}`;
    badge.textContent = state;
    badges.append(badge, " ");
  }
  title.append(name, badges);
  const address = document.createElement("p");
  address.className = "address";
  address.textContent = `${server.address} · zone ${server.zone}`;
  const grid = document.createElement("div");
  grid.className = "metrics";
  const history = server.history;
  metricRow(grid, "CPU", `${Math.round(server.cpu_utilization * 100)} %`,
    sparkline(history.map((point) => point.cpu_utilization), { floor: 1 }));
  metricRow(grid, "req/s", server.requests_per_second.toFixed(0),
    sparkline(history.map((point) => point.requests_per_second), { floor: 10 }));
  metricRow(grid, "p99", `${(server.latency_us_p99 / 1000).toFixed(1)} ms`);
  metricRow(grid, "loop lag", `${(server.loop_lag_us_p99 / 1000).toFixed(1)} ms`);
  const risk = metricRow(grid, "risk", server.risk.toFixed(2),
    sparkline(history.map((point) => point.risk), { floor: 1, threshold: 1, className: "risk" }));
  risk.className += ` ${riskClass(server.risk)}`;
  risk.dataset.role = "risk";
  const parts = document.createElement("p");
  parts.className = "parts";
  parts.dataset.role = "parts";
  parts.textContent = `${server.primary_parts} primary · ${server.replica_parts} replica · ` +
    `${server.sessions} session(s)`;
  node.append(title, address, grid, parts);
  const drain = drains.get(server.server_id);
  if (drain) node.append(drainBar(drain));
  return node;
}

function drainBar(drain) {
  const box = document.createElement("div");
  box.className = "drain";
  const bar = document.createElement("progress");
  bar.max = Math.max(drain.parts_total, 1);
  bar.value = drain.parts_moved;
  const label = document.createElement("span");
  label.textContent = drain.finished
    ? `drained: ${drain.parts_moved} of ${drain.parts_total} moved`
    : `draining: ${drain.parts_moved} of ${drain.parts_total} moved`;
  if (!drain.finished && drain.parts_waiting > 0) {
    label.textContent += `, ${drain.parts_waiting} waiting for another server`;
  }
  box.append(bar, label);
  return box;
}

function showLags(lags) {
  const body = document.getElementById("lags");
  if (lags.length === 0) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 5;
    cell.textContent = "every replica is caught up";
    row.append(cell);
    body.replaceChildren(row);
    return;
  }
  body.replaceChildren(...lags.map((lag) => {
    const row = document.createElement("tr");
    const [session, ...part] = lag.part.split("/");
    const cells = [`${session.slice(0, 8)}/${part.join("/")}`, lag.primary, lag.replica,
      String(lag.entries), lag.seconds.toFixed(1)];
    cells.forEach((value, index) => {
      const cell = document.createElement("td");
      if (index >= 3) cell.className = "number";
      cell.textContent = value;
      row.append(cell);
    });
    return row;
  }));
}

function showSnapshot(snapshot) {
  showLags(snapshot.lags ?? []);
  text("map-version", snapshot.map_version);
  text("override-count", snapshot.override_count);
  text("server-count", snapshot.servers.length);
  servers.replaceChildren(...snapshot.servers.map(card));
}

let lastSnapshot = null;

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => {
    streamState.textContent = "live";
    streamState.className = "state-live";
  };
  source.onerror = () => {
    streamState.textContent = "reconnecting";
    streamState.className = "state-lost";
  };
  source.addEventListener("snapshot", (event) => {
    lastSnapshot = JSON.parse(event.data);
    showSnapshot(lastSnapshot);
  });
  source.addEventListener("audit", (event) => timeline.addRecord(JSON.parse(event.data)));
  source.addEventListener("handoff_started", (event) => timeline.addStarted(JSON.parse(event.data)));
  source.addEventListener("drain", (event) => {
    const drain = JSON.parse(event.data);
    drains.set(drain.server_id, drain);
    if (lastSnapshot) showSnapshot(lastSnapshot);
  });
}

connect();
